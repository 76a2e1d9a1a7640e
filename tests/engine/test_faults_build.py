"""Builds under faults: concurrent builds into one folder, a SIGKILLed driver, a stale lock, a full disk and
read-only storage. Real faults where the container allows them (subprocess builds, SIGKILL, tmpfs mounts);
monkeypatched writers otherwise, so every path is covered either way."""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import x2i.engine.shards as shards_module
from x2i.core.config import to_dict
from x2i.engine.build import PartitionJob, build, compile_plan, run_partition
from x2i.engine.lock import LOCK_NAME, LOCK_NAMES, BuildLock, BuildLocked, DriverGone, DriverGuard
from x2i.engine.recipe import load_recipe
from x2i.engine.shards import StorageError
from x2i.sources.grit import GritSource
from x2i.inspect.validate import validate

X2I = [sys.executable, "-m", "x2i.cli.main"]
LIMIT = 130  # three partitions of the embedded sample


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*X2I, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def cli_build(out: Path, *extra: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return cli("build", "--task", "subject-driven", "--out", out, "-q", *extra, timeout=timeout)


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every data shard and rejects ledger: what must be byte-identical across runs."""
    files = sorted((out / "data").rglob("*.parquet")) + sorted((out / "rejects").glob("*.parquet"))
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def leftovers(out: Path) -> list[Path]:
    """Temp files and lock files: nothing of either may outlive a finished or failed build."""
    return [p for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name in LOCK_NAMES]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("x2i: error: ")
    return lines[0]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The whole embedded sample built once, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    build(load_recipe("subject-driven"), out, progress=False, strict=True)
    return out, output_hashes(out)


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); "
                        "the monkeypatched storage tests cover this path")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True)


def test_concurrent_build_fails_at_once_naming_the_holder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    started, release = threading.Event(), threading.Event()
    original = GritSource.read

    def held_read(self, partition, ctx, limit=None):
        started.set()
        release.wait(120)  # keep the first build in its first partition while the others try
        yield from original(self, partition, ctx, limit)

    monkeypatch.setattr(GritSource, "read", held_read)
    result: dict = {}

    def first() -> None:
        try:
            result["manifest"] = build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            result["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60)
        holder = f"{out} is being built by pid {os.getpid()} on host {socket.gethostname()} since "
        t0 = time.monotonic()
        line = one_error_line(cli_build(out, "--limit", LIMIT))
        assert holder in line and f"remove {out / LOCK_NAME} if that process is gone" in line
        assert time.monotonic() - t0 < 30  # fails at once, does not wait for the holder
        with pytest.raises(BuildLocked, match="is being built by pid"):  # nor may one that would delete its files
            build(load_recipe("subject-driven"), out, limit=LIMIT, overwrite=True, progress=False)
    finally:
        release.set()
        thread.join(300)
    assert "error" not in result, result.get("error")
    assert result["manifest"].rows > 0
    report = validate(out)
    assert report.ok, [str(p) for p in report.problems[:5]]
    assert not leftovers(out)


# (seed, partitions committed before the kill, re-run at once without waiting for the workers to die);
# the seed jitters the kill time after that point.
KILLS = [(0, 0, False), (1, 1, True), pytest.param(2, 2, False, marks=pytest.mark.slow),
         pytest.param(3, 0, True, marks=pytest.mark.slow), pytest.param(4, 1, False, marks=pytest.mark.slow)]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("seed,done,immediate", KILLS)
def test_sigkilled_driver_leaves_no_zombie_commits_and_rerun_is_byte_identical(reference, tmp_path, seed, done,
                                                                               immediate):
    ref_out, ref_hashes = reference
    out = tmp_path / "out"
    driver = subprocess.Popen([*X2I, "build", "--task", "subject-driven", "--out", str(out), "-q", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the driver holds the lock: the build has started
    while len(list((out / "_progress").glob("part-*.json"))) < done and driver.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    records_at_kill = len(list((out / "_progress").glob("part-*.json")))
    workers = children_of(driver.pid)
    killed_at = time.time()
    driver.send_signal(signal.SIGKILL)
    driver.wait(60)
    print(f"seed {seed}: killed with {records_at_kill} partition(s) done and {len(workers)} child process(es)")
    if not immediate:
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "pool workers outlived the killed driver"
        before = snapshot(out) if out.exists() else {}
        time.sleep(1.0)
        assert (snapshot(out) if out.exists() else {}) == before, "a file changed after the driver died"
        late = [p for p, (_, mtime) in before.items() if mtime / 1e9 > killed_at + 0.5]
        assert not late, f"written after the kill: {late}"
    rerun = cli_build(out, "--workers", "2")  # immediate: must wait out the dying workers, not overlap them
    assert rerun.returncode == 0, rerun.stderr
    assert output_hashes(out) == ref_hashes
    assert not leftovers(out)
    assert json.loads((out / "manifest.json").read_text())["rows"] == json.loads(
        (ref_out / "manifest.json").read_text())["rows"]


def test_worker_of_a_dead_driver_commits_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    token = "t0"  # the lock file of a driver that died: its token is there, nobody holds its flock
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "token": token}))
    plan = compile_plan(load_recipe("subject-driven"))
    partition = plan.source.partitions()[0]
    guard = DriverGuard(str(out), token, dead_pid(), socket.gethostname())
    job = PartitionJob(plan, 0, partition, plan.source.label(partition), 20, str(out), False, guard=guard)
    with pytest.raises(DriverGone, match="not committing"):
        run_partition(job)
    assert not list(out.rglob("part-00000*")) and not list(out.rglob(".tmp-*"))


def test_stale_lock_is_taken_over_and_dead_temps_removed(tmp_path, caplog):
    out = tmp_path / "out"
    build(load_recipe("subject-driven"), out, limit=10, progress=False)
    (out / "manifest.json").unlink()  # killed after the partitions, before the manifest
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "token": "old", "started": "2020-01-01T00:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    temps = [out / "data" / "subject_driven" / ".tmp-999999-abcd-part-00000-000.parquet",
             out / "_progress" / ".tmp-999999-abcd-part-00000.json", out / ".tmp-999999-abcd-manifest.json"]
    for temp in temps:
        temp.write_bytes(b"half")
    with caplog.at_level("WARNING", logger="x2i.engine.lock"):
        manifest = build(load_recipe("subject-driven"), out, limit=10, progress=False)
    assert f"from pid {stale['pid']} on host {socket.gethostname()}" in caplog.text and "which is gone" in caplog.text
    assert manifest.rows > 0 and (out / "manifest.json").exists()
    assert not leftovers(out)


def test_live_lock_refuses_even_a_complete_rerun(tmp_path):
    out = tmp_path / "out"
    build(load_recipe("subject-driven"), out, limit=10, progress=False)
    with BuildLock(out):  # e.g. an --overwrite of this folder is running
        with pytest.raises(BuildLocked, match=f"pid {os.getpid()} on host"):
            build(load_recipe("subject-driven"), out, limit=10, progress=False)
    assert build(load_recipe("subject-driven"), out, limit=10, progress=False).rows > 0


def read_only_storage(monkeypatch) -> list[str]:
    """Every way x2i writes fails with EROFS; returns the attempts (which a no-op must not make)."""
    attempts: list[str] = []

    def refuse(name, real, is_write=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if is_write(*args, **kwargs):
                attempts.append(f"{name}{args[:2]}")
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else None)
            return real(*args, **kwargs)
        return wrapper

    def write_mode(file, mode="r", *a, **k):
        return any(c in mode for c in "wax+")

    def write_flags(path, flags, *a, **k):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))

    monkeypatch.setattr(builtins, "open", refuse("open", builtins.open, write_mode))
    monkeypatch.setattr(io, "open", refuse("io.open", io.open, write_mode))
    monkeypatch.setattr(os, "open", refuse("os.open", os.open, write_flags))
    for name in ("replace", "rename", "unlink", "remove", "mkdir", "makedirs", "rmdir", "truncate"):
        monkeypatch.setattr(os, name, refuse(f"os.{name}", getattr(os, name)))
    monkeypatch.setattr(shutil, "rmtree", refuse("rmtree", shutil.rmtree))
    return attempts


def test_complete_rerun_is_a_read_only_no_op(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = build(load_recipe("subject-driven"), out, limit=10, progress=False)
    before = snapshot(out)
    attempts = read_only_storage(monkeypatch)
    again = build(load_recipe("subject-driven"), out, limit=10, progress=False)
    monkeypatch.undo()
    assert attempts == [] and snapshot(out) == before
    assert again == first and to_dict(again) == json.loads((out / "manifest.json").read_text())


def test_read_only_mount_rerun_succeeds_and_a_new_build_fails_in_one_line(tmpfs):
    mnt = tmpfs("64m")
    out = mnt / "out"
    assert cli_build(out, "--limit", 10).returncode == 0
    before = snapshot(out)
    remount(mnt, "ro")
    again = cli_build(out, "--limit", 10)
    assert again.returncode == 0 and "wrote" in again.stdout, again.stderr
    assert snapshot(out) == before
    line = one_error_line(cli_build(out, "--limit", 20))  # a different plan needs the lock: EROFS
    assert str(out) in line and "Read-only file system" in line


def test_full_disk_fails_in_one_line_frees_its_temps_and_resumes(reference, tmpfs):
    mnt = tmpfs("3m")  # room for the first partition's shard (2.4 MB), not the second's
    out = mnt / "out"
    line = one_error_line(cli_build(out))
    assert "No space left on device" in line and str(out / "data" / "subject_driven" / "part-000") in line
    assert not list(out.rglob(".tmp-*")) and not (out / "manifest.json").exists()
    assert not leftovers(out)
    kept = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    st = os.statvfs(mnt)
    assert st.f_bavail * st.f_frsize >= 3 * 2**20 - kept - 256 * 2**10, "the failed partition's temps still fill the disk"
    remount(mnt, "size=64m")
    resumed = cli_build(out)
    assert resumed.returncode == 0, resumed.stderr
    assert output_hashes(out) == reference[1]


def full_disk(budget: int):
    """An `open` for x2i.engine.shards whose files written with "wb" fail with ENOSPC once `budget` bytes reached the
    disk. Like a real full disk, the error comes back from the buffered file's later writes, flush and close
    too, so abort() meets it again while closing (the case that used to leave the temp files)."""
    left = [budget]

    class FullFileIO(io.FileIO):
        def write(self, data):
            if left[0] < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(data)
            return super().write(data)

    def fake_open(path, mode="r", *args, **kwargs):
        if mode == "wb":
            return io.BufferedWriter(FullFileIO(path, "wb"))
        return builtins.open(path, mode, *args, **kwargs)
    return fake_open


@pytest.mark.parametrize("short", [1 << 20, 50], ids=["mid-write", "at-close"])
def test_shard_write_on_full_disk_cleans_up_and_names_the_shard(reference, tmp_path, monkeypatch, short):
    """The disk fills `short` bytes before the first shard is complete: in a row group, or (50) in the
    buffered footer, which fails again when abort() closes the file."""
    first = json.loads((reference[0] / "manifest.json").read_text())["shards"][0]
    assert first["path"].endswith("part-00000-000.parquet")
    out = tmp_path / "out"
    monkeypatch.setattr(shards_module, "open", full_disk(first["bytes"] - short), raising=False)
    with pytest.raises(StorageError) as caught:
        build(load_recipe("subject-driven"), out, progress=False)
    message = str(caught.value)
    assert message == f"{out / first['path']}: No space left on device (ENOSPC)"
    assert not leftovers(out) and not (out / "manifest.json").exists()
    assert not list((out / "data").rglob("*.parquet"))
    monkeypatch.undo()
    build(load_recipe("subject-driven"), out, progress=False)
    assert output_hashes(out) == reference[1]


@pytest.mark.parametrize("target", ["plan.json", "part-00001.parquet", "part-00001.json", "manifest.json"])
def test_small_file_write_on_full_disk_is_one_storage_error(tmp_path, monkeypatch, target):
    out = tmp_path / "out"
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageError) as caught:
        build(load_recipe("subject-driven"), out, limit=LIMIT, progress=False)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(f"{target}: No space left on device (ENOSPC)")
    assert not leftovers(out) and not (out / "manifest.json").exists()
