"""What every benchmark does last: print its figures as one JSON line, write them to --json, drop its work dir."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def report(res: dict[str, Any], json_path: str | None, work: Path | None = None) -> None:
    print(json.dumps(res))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=1))
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
