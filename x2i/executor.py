"""Executors run one function over many partition jobs. Local runs them in this process (or a process pool);
Ray runs each as a Ray task (x2i/ray_executor.py, the only module that imports Ray). Both give identical rows
because each job does all of its own work and writes its own shards.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

from x2i.errors import X2IError


class Executor:
    def map_unordered(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield (job, result, error) as jobs finish; a failed job yields its error instead of stopping the rest."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """workers == 1: in this process, in order. workers > 1: a spawned process pool on this machine."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

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
        with cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            try:
                for fut in cf.as_completed(futures):
                    exc = fut.exception()
                    yield futures[fut], (None if exc else fut.result()), exc
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


def make_executor(name: str, workers: int = 1, address: str | None = None) -> Executor:
    if name == "local":
        if address:
            raise X2IError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    if name == "ray":
        from x2i.ray_executor import RayExecutor

        return RayExecutor(workers, address)
    raise X2IError(f"unknown executor {name!r}; use local or ray")
