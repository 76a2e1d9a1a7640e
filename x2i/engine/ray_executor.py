"""The Ray executor: one Ray task per source partition. The only module of x2i that imports Ray.

Without an address, x2i starts a private local Ray for the build (`address="local"`, so it never joins some other
cluster this machine happens to run) with `workers` CPUs, no dashboard and no worker-log forwarding, and shuts it
down at the end. With `--ray-address ADDR` (or `auto`: the cluster `ray start --head` left on this machine) the
build joins that cluster, whose nodes must have x2i installed and see the same paths (docs/cluster.md).

At most `workers x IN_FLIGHT_PER_WORKER` tasks are in flight: the next partition is submitted as a result comes
back, so a plan of 10k partitions never becomes 10k queued tasks with their arguments in the object store.

Workers import the x2i installed on their node, never the driver's folder: Ray puts the driver's current and
script directories at the front of every worker's sys.path, so a driver run from a folder that holds a checkout
(or anything named x2i) would make every worker import that instead (see _no_driver_paths). No working_dir or
py_modules is ever shipped.

Tasks that die with their worker are retried by Ray; tasks that raise are reported per partition. The driver's
death ends the tasks too: Ray kills a dead driver's (non-detached) job, and until it does each task holds the
folder's workers lock (a new build waits) and commits only while the driver holds the build lock
(DriverGuard.check in run_partition).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import PurePath
from typing import Any

import ray

from x2i.core.errors import X2IError
from x2i.engine.executor import Executor

IN_FLIGHT_PER_WORKER = 2  # one running, one queued behind it per CPU: no CPU idles waiting for the driver
log = logging.getLogger(__name__)


# The S3 endpoint, region and credentials x2i/core/storage.py reads: a worker on another node writing shards to
# (or reading a source from) s3:// must reach the same store as the same user as the driver.
AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


def worker_env() -> dict[str, str]:
    """What workers on a cluster must see as the driver does: the x2i cache (embedded sample), every weight
    folder (X2I_ANNOTATOR_DIR, X2I_CURATION_DIR, X2I_OMNIGEN_DIR, ...), the Hugging Face cache and offline switch,
    and the object-store settings: AWS_* for s3://, HF_TOKEN / HF_ENDPOINT for hf://, the credentials file and
    emulator for gs://. Ray passes these in the job's runtime_env, which the cluster's dashboard shows: prefer
    AWS_PROFILE, instance roles or a token file on the nodes over keys where that matters."""
    forwarded = ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT",
                 "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", *AWS_SETTINGS)
    return {k: v for k, v in os.environ.items() if k.startswith("X2I_") or k in forwarded}


class _NoDriverPaths(list):
    """Stands in for JobConfig._py_driver_sys_path, to which ray.init appends the driver's cwd and script
    directory for workers to put first on their sys.path; dropping them makes workers import installed code."""

    def extend(self, paths) -> None:  # noqa: D102 - ignoring is the point
        pass

    def append(self, path) -> None:
        pass


def _job_config(runtime_env: dict[str, Any] | None):
    from ray.job_config import JobConfig

    config = JobConfig(runtime_env=runtime_env)
    # A private attribute: if a Ray release renames it this does nothing, and tests/core/test_ray_cluster.py
    # (a driver run from a folder holding a broken x2i/) fails, which is how we would learn of it.
    if hasattr(config, "_py_driver_sys_path"):
        config._py_driver_sys_path = _NoDriverPaths()
    return config


def relative_paths(job: Any) -> list[str]:
    """The paths in a partition job that only mean something in the driver's cwd (workers on other nodes
    resolve them against their own): the output folder and the recipe's source path and images."""
    found = []
    out = getattr(job, "out_dir", None)
    plan = getattr(job, "plan", None)  # a PartitionJob carries the compiled plan, whose recipe names the source
    source = plan.recipe.source if plan is not None else None
    for what, value in (("--out", out), ("source path", getattr(source, "path", None)),
                        ("source images", getattr(source, "images", None))):
        if isinstance(value, (str, PurePath)) and "://" not in str(value) and not os.path.isabs(value):
            found.append(f"{what} {value}")
    return found


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
        self.in_flight = self.workers * IN_FLIGHT_PER_WORKER
        self.peak_in_flight = 0  # the most tasks ever submitted and not yet collected (tests, benchmarks)
        self.timings: dict[str, float] = {}  # start_s / stop_s of a Ray this executor started itself
        self._started = False

    def _init(self) -> None:
        if ray.is_initialized():
            return  # the caller's own Ray (a notebook, the benchmark): use it as it is
        begin = time.perf_counter()
        if self.address:
            # Other nodes do not inherit this process's environment: forward what x2i reads from it.
            env = worker_env()
            ray.init(address=self.address, job_config=_job_config({"env_vars": env} if env else None),
                     log_to_driver=False, configure_logging=False)
        else:
            # The raylet started here inherits os.environ, so no runtime env is needed: workers started for
            # it would not be the ones Ray prestarts (seconds more per build on a small machine).
            ray.init(address="local", num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, job_config=_job_config(None))
            self._started = True
        self.timings["start_s"] = time.perf_counter() - begin
        log.info("ray: %s in %.2f s", "joined " + self.address if self.address else "started", self.timings["start_s"])

    def _check_paths(self, job: Any) -> None:
        if not self.address:
            return  # a local Ray's workers run in this cwd
        found = relative_paths(job)
        if found:
            raise X2IError(f"with --ray-address every node resolves paths itself: give absolute paths that all "
                           f"nodes see (relative here: {', '.join(found)})")

    def map_unordered(self, fn, jobs):
        jobs = iter(jobs)
        first = next(jobs, None)
        if first is None:
            return
        self._check_paths(first)
        self._init()
        remote = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)(_guarded)
        pending: dict[Any, Any] = {}
        queue = [first]

        def fill() -> None:
            while len(pending) < self.in_flight:
                job = queue.pop() if queue else next(jobs, None)
                if job is None:
                    return
                pending[remote.remote(fn, job, self.guard)] = job
                self.peak_in_flight = max(self.peak_in_flight, len(pending))

        try:
            fill()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                result, error = self._outcome(done[0])
                fill()  # before yielding: the next task runs while the caller handles this result
                yield job, result, error
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _outcome(ref) -> tuple[Any, BaseException | None]:
        try:
            return ray.get(ref), None
        except ray.exceptions.RayTaskError as exc:
            # A user error (StorageError, ...) keeps its one-line message; anything else keeps Ray's remote
            # traceback.
            cause = exc.cause
            return None, cause if isinstance(cause, (X2IError, OSError)) else exc.as_instanceof_cause()
        except ray.exceptions.RayError as exc:
            return None, exc

    def close(self) -> None:
        if self._started and ray.is_initialized():
            begin = time.perf_counter()
            ray.shutdown()
            self.timings["stop_s"] = time.perf_counter() - begin
        self._started = False
