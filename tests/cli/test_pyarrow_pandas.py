"""An `x2i` data command's process never imports pandas for pyarrow (x2i.cli.main._pyarrow_without_pandas):
a real build with a 2-process pool, its post-build passes and manifest, then pyarrow's own pandas functions,
which must still work in that process once asked for."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("pandas", reason="pyarrow only imports pandas when it is installed: nothing to keep out")

RUN = """
import json, sys
sys.argv = ["x2i"] + sys.argv[1:]
from x2i.cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
before = "pandas" in sys.modules
import pyarrow as pa, pandas as pd
frame = pa.table({"a": [1, 2]}).to_pandas()
back = pa.Table.from_pandas(pd.DataFrame({"b": [3]}))
print(json.dumps({"code": code, "pandas_before": before, "to_pandas": frame["a"].tolist(), "from_pandas": back.num_rows}))
"""


def run(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_build_and_its_checks_never_import_pandas(tmp_path):
    out = str(tmp_path / "out")
    embedded = 'source.options.embedded={"scenes": 12, "per_shard": 5, "size": 400, "photos": false}'
    built = run("build", "--task", "text-to-image", "-o", out, "-q", "--workers", "2", "--set", embedded)
    assert built == {"code": 0, "pandas_before": False, "to_pandas": [1, 2], "from_pandas": 1}
    assert run("validate", out)["pandas_before"] is False


def test_a_library_users_process_keeps_pyarrows_default():
    code = "import sys, x2i.cli.main, pyarrow as pa; pa.array([0]); print('pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, "build"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"  # importing the CLI module changes nothing; only main() does
