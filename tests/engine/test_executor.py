"""The local executor's start method: fork where it is safe (workers start with the driver's imports), spawn
otherwise; a forked worker never keeps the driver's lock alive."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from x2i.engine.executor import LocalExecutor
from x2i.engine.lock import BuildLock


def start_method_in_a_fresh_process(setup: str) -> str:
    code = f"{setup}\nfrom x2i.engine.executor import start_method\nprint(start_method())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_fork_only_when_single_threaded_and_without_torch():
    assert start_method_in_a_fresh_process("") == "fork"
    thread = "import threading, time\nthreading.Thread(target=time.sleep, args=(5,), daemon=True).start()"
    assert start_method_in_a_fresh_process(thread) == "spawn"
    assert start_method_in_a_fresh_process("import sys; sys.modules['torch'] = object()") == "spawn"
    # the build's progress bar (on by default) starts no thread, so an interactive build still forks
    bar = "from x2i.engine.build import progress_bar\nprogress_bar(4, 0, 'x').update(1)"
    assert start_method_in_a_fresh_process(bar) == "fork"


def _pid_and_open_fds(_job: int) -> tuple[int, list[str]]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return os.getpid(), fds


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_pool_workers_do_not_hold_the_drivers_lock(tmp_path, monkeypatch):
    import x2i.engine.executor

    monkeypatch.setattr(x2i.engine.executor, "start_method", lambda: "fork")  # whatever this session imported
    with BuildLock(tmp_path) as lock:
        held = os.readlink(f"/proc/self/fd/{lock.fd}")
        results = list(LocalExecutor(2, lock.guard).map_unordered(_pid_and_open_fds, [0, 1, 2, 3]))
    assert all(error is None for _, _, error in results)
    workers = {pid for _, (pid, _), _ in results}
    assert os.getpid() not in workers and workers
    for _, (_, fds), _ in results:
        assert held not in fds, "a worker inherited the driver's lock descriptor"


FROZEN = """
import gc, sys
from x2i.engine.executor import LocalExecutor, start_method

def frozen(_job):
    return gc.get_freeze_count()

if __name__ == "__main__":
    assert start_method() == "fork" and gc.get_freeze_count() == 0
    results = list(LocalExecutor(workers=2).map_unordered(frozen, [0, 1]))
    assert [error for _, _, error in results] == [None, None], results
    assert all(count > 1000 for _, count, _ in results), results
    assert gc.get_freeze_count() == 0
    stream = LocalExecutor(workers=2).map_unordered(frozen, [0, 1, 2])
    next(stream)
    assert gc.get_freeze_count() > 0
    stream.close()
    assert gc.get_freeze_count() == 0
    print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_forked_workers_start_with_the_drivers_objects_frozen_and_the_driver_unfreezes(tmp_path):
    """Workers' collections skip what the driver held at the fork (gc.freeze); afterwards the driver's objects
    are collectable again, also when the caller stops reading results early. In a fresh process: this one may
    hold torch, which makes the pool spawn."""
    script = tmp_path / "frozen.py"
    script.write_text(FROZEN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
