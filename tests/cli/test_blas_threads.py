"""Data commands run numpy's BLAS on one thread (unless the user set it); model commands keep the default."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import sys; sys.argv = ['x2i'] + sys.argv[1:]; import x2i.cli.main, os, numpy; "
         "print(os.environ.get('OPENBLAS_NUM_THREADS'))")


def blas_threads(*argv: str, env_value: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("argv", [("build", "--task", "x"), ("-v", "validate", "d"), ("download", "u")])
def test_data_commands_use_one_blas_thread(argv):
    assert blas_threads(*argv) == "1"


def test_model_commands_and_the_users_setting_are_left_alone():
    assert blas_threads("train", "--mix", "m.yaml") == "None"
    assert blas_threads("generate") == "None"
    assert blas_threads("build", env_value="4") == "4"
