"""Executors run one function over many partition jobs. Local runs them in this process (or a process pool);
Ray runs each as a Ray task (x2i/engine/ray_executor.py, the only module that imports Ray). Both give identical rows
because each job does all of its own work and writes its own shards.

Workers never outlive the driver: pool workers get SIGKILL when it dies (Linux PR_SET_PDEATHSIG) and, on any
platform, a watchdog thread exits them when their parent changes. With a `guard` (x2i.engine.lock.DriverGuard)
every worker also holds the output folder's workers lock while it runs, so a new build waits them out.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from x2i.core.errors import X2IError

PR_SET_PDEATHSIG = 1
WATCHDOG_S = 0.25
_held_fds: list[int] = []  # the workers-lock descriptor of a pool worker, open for its whole life


class Executor:
    def map_unordered(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield (job, result, error) as jobs finish; a failed job yields its error instead of stopping the rest."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies; a no-op elsewhere (the watchdog covers it)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc/prctl: the watchdog thread still applies
        pass


def _watch_parent(driver_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_S)
        if os.getppid() != driver_pid:
            os._exit(1)  # the driver is gone: stop now, never commit for it (its re-run redoes our partition)


def _worker_init(driver_pid: int, guard: Any) -> None:
    _die_with_parent()
    if os.getppid() != driver_pid:  # the driver died before PDEATHSIG was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(driver_pid,), name="x2i-parent-watchdog", daemon=True).start()
    if guard is not None:
        _held_fds.append(guard.hold_workers())


def start_method() -> str:
    """How pool workers start. fork where it is safe: a forked worker begins with everything the driver already
    imported and compiled, where a spawned one spends ~0.7 s of CPU importing numpy, pyarrow, OpenCV and x2i
    again (a 20-row download build with 2 workers: 3.0 s -> 1.6 s, docs/benchmarks.md). Safe means Linux (macOS
    system libraries are not fork-safe), no other thread in the driver (a lock another thread holds at the fork
    stays locked in the child forever) and no torch loaded (its OpenMP pool does not survive a fork); else spawn.
    OpenCV runs single-threaded in every x2i process (x2i.core.imageio), so it never has a pool to lose."""
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules:
        return "fork"
    return "spawn"


def _import_before_fork() -> None:
    """pyarrow imports pandas, when installed, on its first conversion of Python values (0.17 s): every worker
    would do so at its first shard, and the driver again in the post-build passes. Done once here, before the
    fork, the workers inherit it (a 2,000-URL download build with 2 workers: bench/e2e_bench.py). In an `x2i`
    command pyarrow has already been told there is no pandas (x2i.cli.main), and this imports nothing."""
    import pyarrow as pa

    pa.array([0])


class LocalExecutor(Executor):
    """workers == 1: in this process, in order. workers > 1: a process pool on this machine (`start_method`)."""

    def __init__(self, workers: int = 1, guard: Any = None):
        self.workers = max(1, int(workers))
        self.guard = guard

    def map_unordered(self, fn, jobs):
        if self.workers == 1:
            for job in jobs:
                try:
                    result = fn(job)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    yield job, None, exc
                    continue
                yield job, result, None
            return
        method = start_method()
        if method == "fork":
            _import_before_fork()
            # Every object the driver holds now is moved out of the collector's reach: a forked worker's
            # collections then never walk (and never write to, so never copy) the pages the driver's modules
            # share with it (a 20-URL download build with 2 workers: 0.66 -> 0.58 s, docs/benchmarks.md).
            gc.freeze()
        try:
            with cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                        initializer=_worker_init, initargs=(os.getpid(), self.guard)) as pool:
                futures = {pool.submit(fn, job): job for job in jobs}
                try:
                    for fut in cf.as_completed(futures):
                        exc = fut.exception()
                        yield futures[fut], (None if exc else fut.result()), exc
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            gc.unfreeze()  # the driver's objects are collectable again (a long-lived process builds many times)


def make_executor(name: str, workers: int = 1, address: str | None = None, guard: Any = None) -> Executor:
    """`guard`: the build's x2i.engine.lock.DriverGuard (optional, so the executors stay usable on their own)."""
    if name == "local":
        if address:
            raise X2IError("--ray-address needs --executor ray")
        return LocalExecutor(workers, guard)
    if name == "ray":
        from x2i.engine.ray_executor import RayExecutor

        return RayExecutor(workers, address, guard)
    raise X2IError(f"unknown executor {name!r}; use local or ray")
