"""An `x2i` process keeps pyarrow's allocator off transparent huge pages (x2i/cli/main.py): no mapping of the
process is marked for them (`hg` in /proc/self/smaps) after pyarrow has allocated, where a plain process with
the same pyarrow has its arena marked."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")

MARKED = """
import re, sys
{setup}
import pyarrow as pa
pa.array([b"x" * (1 << 20)] * 8)  # the allocator's first arena
flags = re.findall(r"^VmFlags:(.*)$", open("/proc/self/smaps").read(), re.M)
print(sum(" hg" in f for f in flags))
"""


def _marked(setup: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    done = subprocess.run([sys.executable, "-c", MARKED.format(setup=setup)], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    return int(done.stdout.strip())


def test_the_cli_process_asks_for_no_huge_pages():
    plain = _marked("")
    if plain == 0:
        pytest.skip("this pyarrow's allocator asks for no huge pages: nothing to turn off")
    # Importing the CLI module for a data command sets the allocator's option before pyarrow loads.
    assert _marked("sys.argv = ['x2i', 'stats']; import x2i.cli.main") == 0
