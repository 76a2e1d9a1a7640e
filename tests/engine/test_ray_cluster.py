"""The Ray executor on real Ray: a two-node cluster started with `ray start` (one CPU each, separate temp dirs),
builds driven by the `x2i` command from a folder holding a broken `x2i/` package, and a private local Ray.

Every Ray process here is started by these tests and stopped in a `finally`, and lives under a private RAY_TMPDIR
so that neither `--ray-address auto` here nor anyone else's `ray.init()` on this machine finds the other's cluster.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from x2i.core.errors import X2IError
from x2i.engine.build import build
from x2i.engine.recipe import load_recipe

LIMIT = 130  # quotas 50, 50, 30, 0, 0: five partition tasks, more than the 2 x 2 allowed in flight
START_TIMEOUT_S = 90
BROKEN_X2I = "raise ImportError('the x2i/ folder of the current directory was imported, not the installed x2i')\n"
X2I = Path(sys.executable).with_name("x2i")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    # `ray` may live in another environment's bin (a shared site-packages): run its entry point with ours.
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]


def _wait_for(predicate, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: `ray start` exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not up after {START_TIMEOUT_S} s")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    """`ray start --block` drains and stops its node's processes on SIGTERM."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine; yields (address, env for drivers, node 2's temp dir)."""
    # Short: Ray's unix socket paths live under it and must stay under ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="x2i-ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "X2I_"))}
    # RAY_TMPDIR/ray is where `auto` looks for the address; auth explicit because `ray start --head` turns
    # token auth on whenever ~/.ray/auth_token exists but a joining `ray start` does not.
    env.update(RAY_TMPDIR=str(root), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               X2I_CACHE=str(root / "not-the-build-cache"))  # the driver must forward its own X2I_CACHE
    procs: list[subprocess.Popen] = []
    try:
        head_log = open(root / "head.log", "wb")
        procs.append(subprocess.Popen(
            _ray_cli() + ["start", "--head", "--block", "--num-cpus", "1", "--port", str(_free_port()),
                          "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(root / "ray")],
            env=env, cwd=root, stdout=head_log, stderr=subprocess.STDOUT))
        address_file = root / "ray" / "ray_current_cluster"
        _wait_for(address_file.exists, "head node", procs)
        address = address_file.read_text().strip()
        node_log = open(root / "node2.log", "wb")
        procs.append(subprocess.Popen(
            _ray_cli() + ["start", "--block", "--address", address, "--num-cpus", "1", "--disable-usage-stats",
                          "--temp-dir", str(root / "node2")],
            env=env, cwd=root, stdout=node_log, stderr=subprocess.STDOUT))
        _wait_for(lambda: b"Ray runtime started" in (root / "node2.log").read_bytes(), "second node", procs)
        yield address, env, root / "node2"
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _decoy(tmp_path: Path) -> Path:
    """A driver cwd holding a broken x2i package (as a folder with a checkout of the repo would)."""
    cwd = tmp_path / "cwd"
    (cwd / "x2i").mkdir(parents=True)
    (cwd / "x2i" / "__init__.py").write_text(BROKEN_X2I)
    return cwd


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every data shard and rejects ledger, by path relative to the build folder."""
    files = sorted(p for d in ("data", "rejects") for p in (out / d).rglob("*.parquet"))
    assert files
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _x2i_build(cwd: Path, env: dict[str, str], out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**env, "X2I_CACHE": os.environ["X2I_CACHE"]}
    return subprocess.run([str(X2I), "build", "--task", "subject-driven", "--out", str(out), "-q", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cluster_build_from_a_folder_with_a_broken_x2i_is_byte_identical(cluster, tmp_path):
    address, env, node2 = cluster
    local = tmp_path / "local"
    build(load_recipe("subject-driven"), local, limit=LIMIT, progress=False)
    out = tmp_path / "ray"
    done = _x2i_build(_decoy(tmp_path), env, out, "--limit", str(LIMIT), "--executor", "ray",
                      "--ray-address", address, "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _digests(out) == _digests(local)
    # Tasks ran on the second node too: it started workers for the build's job (job 01000000 is the first).
    assert list(node2.glob("session_*/logs/worker-*-01000000-*.out"))
    assert not (Path(env["X2I_CACHE"])).exists()  # workers used the driver's X2I_CACHE, forwarded


@pytest.mark.slow
def test_auto_joins_the_cluster_ray_start_left(cluster, tmp_path):
    _, env, _ = cluster
    local = tmp_path / "local"
    build(load_recipe("subject-driven"), local, limit=60, progress=False)
    out = tmp_path / "auto"
    done = _x2i_build(_decoy(tmp_path), env, out, "--limit", "60", "--executor", "ray", "--ray-address", "auto",
                      "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _digests(out) == _digests(local)


def test_a_cluster_build_refuses_relative_paths_before_starting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(X2IError, match="absolute paths"):
        # Port 9 answers nothing: the check must come before any connection attempt.
        build(load_recipe("subject-driven"), Path("rel-out"), limit=10, executor="ray", ray_address="127.0.0.1:9",
              progress=False)


def test_local_ray_keeps_at_most_two_tasks_per_worker_in_flight(tmp_path, monkeypatch):
    """A private local Ray (one CPU) from a folder with a broken x2i/: 12 tasks, never more than 2 submitted."""
    import ray

    from x2i.engine.ray_executor import RayExecutor

    monkeypatch.chdir(_decoy(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    executor = RayExecutor(workers=1)
    try:
        results = list(executor.map_unordered(time.sleep, [0.05] * 12))
    finally:
        executor.close()
    assert [error for _, _, error in results] == [None] * 12
    assert executor.peak_in_flight == 2
    assert not ray.is_initialized() and set(executor.timings) == {"start_s", "stop_s"}
