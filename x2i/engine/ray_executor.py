"""The Ray executor: one Ray task per source partition. The only module of x2i that imports Ray.

Without an address, a local Ray instance with `workers` CPUs is started (and shut down at the end); with
`--ray-address`, the build joins that cluster, whose nodes must have x2i installed and see the same paths.
Tasks that die with their worker are retried by Ray; tasks that raise are reported per partition.

The driver's death ends the tasks too: Ray kills a dead driver's (non-detached) job, and until it does each
task holds the folder's workers lock (a new build waits) and commits only while the driver holds the build
lock (DriverGuard.check in run_partition).
"""
from __future__ import annotations

import os
from typing import Any

import ray

from x2i.core.errors import X2IError
from x2i.engine.executor import Executor


def worker_env() -> dict[str, str]:
    """What workers on a cluster must see as the driver does: the x2i cache (embedded sample), every weight
    folder (X2I_ANNOTATOR_DIR, X2I_CURATION_DIR, X2I_OMNIGEN_DIR, ...), the Hugging Face cache and offline switch."""
    hf = ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE")
    return {k: v for k, v in os.environ.items() if k.startswith("X2I_") or k in hf}


def _guarded(fn, job, guard):
    """One task: with the build's guard, hold the workers lock while running (Ray reuses worker processes,
    so per task, not per process)."""
    if guard is None:
        return fn(job)
    with guard.holding_workers():
        return fn(job)


class RayExecutor(Executor):
    def __init__(self, workers: int = 1, address: str | None = None, guard: Any = None):
        self.workers = max(1, int(workers))
        self.address = address
        self.guard = guard
        self._started = False

    def _init(self) -> None:
        if ray.is_initialized():
            return
        env = {"env_vars": worker_env()}
        if self.address:
            ray.init(address=self.address, runtime_env=env, log_to_driver=True)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, runtime_env=env, log_to_driver=True,
                     configure_logging=False)
        self._started = True

    def map_unordered(self, fn, jobs):
        self._init()
        remote = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)(_guarded)
        pending = {remote.remote(fn, job, self.guard): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job = pending.pop(ref)
                try:
                    yield job, ray.get(ref), None
                except ray.exceptions.RayTaskError as exc:
                    # A user error (StorageError, ...) keeps its one-line message; anything else keeps Ray's
                    # remote traceback.
                    cause = exc.cause
                    yield job, None, cause if isinstance(cause, (X2IError, OSError)) else exc.as_instanceof_cause()
                except ray.exceptions.RayError as exc:
                    yield job, None, exc
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
