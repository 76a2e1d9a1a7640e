"""The console script's exit (x2i.cli.main.run): the code `main` chose, every exit handler run, the streams
flushed into a pipe, and a normal exit while a thread still runs."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("ran"))
mode = sys.argv[2]
if mode == "thread":  # a non-daemon thread that outlives main: the exit must wait for it, as Python's does
    threading.Thread(target=lambda: (time.sleep(0.3), open(marker + ".thread", "w").write("done"))).start()
if mode == "message":
    import x2i.cli.main as m
    m.main = lambda: sys.exit("x2i: stopped with a message")
sys.argv = ["x2i", *sys.argv[3:]]
from x2i.cli.main import run
run()
"""


def _run(tmp_path, mode: str, *argv: str) -> tuple[subprocess.CompletedProcess, str]:
    marker = str(tmp_path / f"atexit-{mode}")
    done = subprocess.run([sys.executable, "-c", SCRIPT, marker, mode, *argv], capture_output=True, text=True,
                          timeout=120)
    return done, marker


def test_help_is_flushed_whole_and_exit_handlers_run(tmp_path):
    done, marker = _run(tmp_path, "plain", "--help")
    assert done.returncode == 0
    assert "build" in done.stdout and done.stdout.rstrip().endswith("─╯")  # the whole help text, not a cut buffer
    assert open(marker).read() == "ran"


def test_a_user_error_keeps_exit_2_and_its_line(tmp_path):
    done, marker = _run(tmp_path, "plain", "build", "--task", "no-such-task")
    assert done.returncode == 2
    assert done.stderr.startswith("x2i: error: no recipe named 'no-such-task'")
    assert open(marker).read() == "ran"


def test_a_message_exit_prints_it_and_exits_1(tmp_path):
    done, marker = _run(tmp_path, "message")
    assert done.returncode == 1
    assert done.stderr.strip() == "x2i: stopped with a message"
    assert open(marker).read() == "ran"


def test_a_running_thread_is_waited_for(tmp_path):
    done, marker = _run(tmp_path, "thread", "--help")
    assert done.returncode == 0
    assert open(marker + ".thread").read() == "done"
    assert open(marker).read() == "ran"
