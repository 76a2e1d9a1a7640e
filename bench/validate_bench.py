"""`x2i validate` rows/s with the per-shard decode cache vs without it, on the same build, in one run.

    python bench/validate_bench.py [--scenes 400] [--repeats 3]

The build: subject-driven from the shapes world (GRIT + img2dataset format, 512 px), where one scene's photo is
the output image of several samples and an entity crop is an input of several. "without": DecodeCache with no
room (every image decoded, as before the cache); "with": the default. Alternating, median of each.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="x2i-validate-bench-"))
    os.environ.setdefault("X2I_CACHE", str(work / "cache"))
    from x2i.engine.build import build
    from x2i.engine.recipe import load_recipe
    from x2i.inspect import validate as v

    recipe = load_recipe("subject-driven")
    recipe.source.options = {"embedded": {"scenes": a.scenes, "per_shard": 100, "size": 512, "photos": False}}
    out = work / "build"
    manifest = build(recipe, out, progress=False)
    real = v.DecodeCache
    times: dict[str, list[float]] = {"without_cache": [], "with_cache": []}
    decodes = {}
    for _ in range(a.repeats):
        for name, factory in (("without_cache", lambda: real(max_entries=0)), ("with_cache", real)):
            made = []
            v.DecodeCache = lambda f=factory: made.append(f()) or made[-1]
            t = time.perf_counter()
            report = v.validate(out)
            times[name].append(time.perf_counter() - t)
            assert report.ok, report.summary()
            decodes[name] = sum(c.decodes for c in made)
    v.DecodeCache = real
    rows = manifest["rows"]
    res = {"rows": rows, "images": report.images, "decodes": decodes, "load": os.getloadavg(),
           "rows_per_s": {k: round(rows / statistics.median(t), 1) for k, t in times.items()}}
    res["with_over_without"] = round(res["rows_per_s"]["with_cache"] / res["rows_per_s"]["without_cache"], 2)
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
