"""`x2i validate` decodes each distinct image of a shard once, and reports exactly what it reported before."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from x2i.inspect import validate as v


def jpeg(color, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_shared_images_are_decoded_once_and_problems_are_named_per_row(tmp_path, monkeypatch):
    from x2i.core.schema import ARROW_SCHEMA

    a, b, bad = jpeg((200, 0, 0)), jpeg((0, 200, 0)), b"\xff\xd8\xff\xe0 not really a jpeg"
    rows = []
    for i in range(30):
        inputs = [a, b] if i % 3 else [bad]
        n = len(inputs)
        instruction = " ".join(f"<img><|image_{k}|></img>" for k in range(1, n + 1)) + " do it"
        rows.append({"id": f"r{i}", "task": "t", "instruction": instruction,
                     "input_images": [{"bytes": d, "path": None} for d in inputs],
                     "output_image": {"bytes": a if i % 2 else b, "path": None}, "source": "s", "source_key": str(i),
                     "width": 64, "height": 48, "meta": json.dumps({}), "aesthetic": None, "clip_score": None,
                     "phash": None})
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, row_group_size=10)

    calls = []
    real = v.decode
    monkeypatch.setattr(v, "decode", lambda data, *a: calls.append(data) or real(data, *a))
    report = v.validate(path, multiple=16)
    assert len(calls) == 3  # a, b and the bad bytes, each once for 30 rows and 70 images
    assert report.images == 30 + sum(2 if i % 3 else 1 for i in range(30))
    bad_rows = [p for p in report.problems if "does not decode" in p.message]
    assert [p.row for p in bad_rows] == [i for i in range(30) if i % 3 == 0]
    assert all(p.message.startswith("input image 1 does not decode") for p in bad_rows)

    # The same verdicts with a cache too small to ever hit.
    real_cache = v.DecodeCache
    monkeypatch.setattr(v, "DecodeCache", lambda: real_cache(max_entries=0))
    calls.clear()
    again = v.validate(path, multiple=16)
    assert [str(p) for p in again.problems] == [str(p) for p in report.problems]
    assert len(calls) == report.images
