"""The GRIT reader on real-format fixtures: GRIT's released columns and img2dataset's output layouts."""
import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from x2i.core.errors import SourceError
from x2i.engine.recipe import SourceConfig
from x2i.shapes.embedded import GRIT_ADDITIONAL, GRIT_SCHEMA
from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard
from x2i.sources import make_source
from x2i.engine.steps import Context


def jpeg(w=96, h=64, color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG")
    return buf.getvalue()


def grit_row(i, caption, chunks, **extra):
    return {"id": 100 + i, "url": f"https://example.com/{i}.jpg", "caption": caption, "width": 96, "height": 64,
            "noun_chunks": chunks, "ref_exps": [], "clip_similarity_vitb32": 0.3, "clip_similarity_vitl14": 0.3,
            "licence": None, **extra}


UNICODE = "Ein Hund 🐕 läuft über die Straße nach 東京"
ROWS = [
    grit_row(0, "A red box on a table.", [[0, 9, 0.1, 0.1, 0.6, 0.7, 0.9], [15, 20, 0.0, 0.0, 1.004, 1.0, 0.8]]),
    grit_row(1, "A dog.", [[0, 5, 0.2, 0.2, 1.5, 0.9, 0.9],      # box far outside [0, 1]
                           [0, 5, 0.5, 0.2, 0.5, 0.9, 0.9],      # zero width
                           [0, 5, 0.8, 0.2, 0.3, 0.9, 0.9],      # inverted
                           [0, 50, 0.1, 0.1, 0.5, 0.5, 0.9],     # span beyond the caption
                           [0, 5, math.nan, 0.1, 0.5, 0.5, 0.9]]),
    grit_row(2, "Nothing grounded here.", []),
    grit_row(3, UNICODE, [[UNICODE.index("Hund"), UNICODE.index("Hund") + 6, 0.1, 0.1, 0.5, 0.9, 0.7],
                          [UNICODE.index("東京"), len(UNICODE), 0.5, 0.0, 1.0, 0.5, 0.7]]),
]


def write_self_contained(folder, rows, images=None, statuses=None):
    records = []
    for k, row in enumerate(rows):
        extra = {name: row.get(name) for name, _ in GRIT_ADDITIONAL}
        status = (statuses or {}).get(k, "success")
        data = None if status != "success" else (images or {}).get(k, jpeg())
        records.append(DownloadRecord(row["url"], row["caption"], data, 96, 64, status=status,
                                      error_message=None if status == "success" else "HTTP 404", additional=extra))
    write_shard(folder, 0, records, GRIT_ADDITIONAL)


def read_all(config):
    source = make_source(config)
    ctx = Context(strict=True)
    samples = [s for p in source.partitions() for s in source.read(p, ctx)]
    return samples, ctx


def test_chunks_are_validated_one_by_one(tmp_path):
    write_self_contained(tmp_path, ROWS)
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    by_key = {s.source_key: s for s in samples}
    assert sorted(by_key) == ["100", "101", "102", "103"]
    first = by_key["100"].meta["entities"]
    assert [e["phrase"] for e in first] == ["A red box", "table"]
    assert first[1]["box"] == [0.0, 0.0, 1.0, 1.0]  # 1.004 is detector noise: clipped, not rejected
    assert by_key["101"].meta["entities"] == []
    assert ctx.reject_counts == {"chunk_box_out_of_range": 1, "chunk_box_empty": 1, "chunk_box_inverted": 1,
                                 "chunk_span_invalid": 1, "chunk_box_invalid": 1}
    assert by_key["102"].meta["entities"] == []
    assert [e["phrase"] for e in by_key["103"].meta["entities"]] == ["Hund 🐕", "東京"]
    assert by_key["100"].meta["url"] == "https://example.com/0.jpg"
    assert by_key["100"].output_image.size == (96, 64)


def test_missing_and_bad_images_are_rejected_with_reasons(tmp_path):
    rows = [grit_row(k, f"A thing {k}.", [[0, 7, 0.1, 0.1, 0.9, 0.9, 0.9]]) for k in range(5)]
    rows[3]["caption"] = None
    write_self_contained(tmp_path, rows, images={1: b"not an image at all"}, statuses={2: "failed_to_download"})
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert [s.source_key for s in samples] == ["100", "104"]
    assert ctx.reject_counts == {"image_unreadable": 1, "img2dataset_failed_to_download": 1, "caption_missing": 1}
    failed = next(r for r in ctx.rejects if r.reason == "img2dataset_failed_to_download")
    assert failed.meta["url"] == "https://example.com/2.jpg" and failed.detail == "HTTP 404"


def test_split_layout_joins_metadata_by_url(tmp_path):
    images = tmp_path / "images"
    rows = ROWS[:2] + [grit_row(9, "A cat.", [[0, 5, 0.1, 0.1, 0.9, 0.9, 0.9]])]
    # img2dataset run without --save_additional_columns: keys differ from GRIT's, only url/caption travel
    write_shard(images, 0, [DownloadRecord(r["url"], r["caption"], jpeg(), 96, 64) for r in rows], [])
    meta = tmp_path / "grit"
    meta.mkdir()
    table = pa.Table.from_pylist([{**r, "key": "000373938"} for r in ROWS[:2]], schema=GRIT_SCHEMA)
    pq.write_table(table, meta / "coyo_0_snappy.parquet")
    samples, ctx = read_all(SourceConfig(format="grit", path=str(meta), images=str(images)))
    assert [s.source_key for s in samples] == ["100", "101"]
    assert [e["phrase"] for e in samples[0].meta["entities"]] == ["A red box", "table"]
    assert ctx.reject_counts["grit_row_not_found"] == 1


def test_img2dataset_parquet_output(tmp_path):
    rows = []
    for k, r in enumerate(ROWS[:2]):
        rows.append({"key": f"00000{k:04d}", "jpg": jpeg(), "status": "success", "error_message": None,
                     **{c: r[c] for c in GRIT_SCHEMA.names if c != "key"}})
    rows.append({**rows[0], "key": "000000002", "jpg": None, "status": "failed_to_download", "error_message": "timeout"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert [s.source_key for s in samples] == ["100", "101"]
    assert ctx.reject_counts["img2dataset_failed_to_download"] == 1


def test_missing_column_is_a_source_error_naming_file_and_column(tmp_path):
    meta = tmp_path / "grit"
    meta.mkdir()
    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), meta / "bad.parquet")
    write_shard(tmp_path / "images", 0, [DownloadRecord("u", "c", jpeg(), 96, 64)], [])
    with pytest.raises(SourceError) as err:
        make_source(SourceConfig(format="grit", path=str(meta), images=str(tmp_path / "images")))
    assert "bad.parquet" in str(err.value) and "noun_chunks" in str(err.value)


def test_truncated_tar_keeps_what_was_read(tmp_path):
    rows = [grit_row(k, f"A thing {k}.", [[0, 7, 0.1, 0.1, 0.9, 0.9, 0.9]]) for k in range(6)]
    write_self_contained(tmp_path, rows, images={k: jpeg(300, 200) for k in range(6)})
    tar = tmp_path / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * 0.6) + 100])  # killed mid-write, as img2dataset leaves it
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert 1 <= len(samples) < 6
    assert ctx.reject_counts["img2dataset_tar_truncated"] == 1
    # the sidecar knows every URL: the ones lost with the tar's tail are rejects naming their url
    lost = [r for r in ctx.rejects if r.reason == "img2dataset_missing_from_tar"]
    assert len(samples) + len(lost) + ctx.reject_counts["image_missing"] == 6
    assert all(r.meta["url"].startswith("https://example.com/") for r in lost)
    (tmp_path / "00000.parquet").unlink()  # no sidecar: the missing end marker still gives it away
    tar.write_bytes(data[: 512 * 40])
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert ctx.reject_counts["img2dataset_tar_truncated"] == 1


def test_aspect_changed_by_resize_mode_is_rejected(tmp_path):
    row = grit_row(0, "A red box.", [[0, 9, 0.1, 0.1, 0.6, 0.7, 0.9]])
    rec = DownloadRecord(row["url"], row["caption"], jpeg(64, 64), 64, 64,
                         additional={name: row.get(name) for name, _ in GRIT_ADDITIONAL})
    write_shard(tmp_path, 0, [rec], GRIT_ADDITIONAL)
    sidecar = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    sidecar[0]["original_width"] = 128  # center_crop from 128x64: normalized boxes no longer fit
    pq.write_table(pa.Table.from_pylist(sidecar), tmp_path / "00000.parquet")
    import json, tarfile
    with tarfile.open(tmp_path / "00000.tar") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    meta = json.loads(members["000000000.json"])
    meta["original_width"] = 128
    members["000000000.json"] = json.dumps(meta).encode()
    with tarfile.open(tmp_path / "00000.tar", "w") as t:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert samples == [] and ctx.reject_counts == {"aspect_changed": 1}


def test_a_failed_read_stops_a_damaged_archive_is_data(tmp_path, monkeypatch):
    """A read that fails under the tar (a dropped connection to the store, EIO) is not a damaged shard: the
    build stops with one line (SourceError). A corrupt gzip stream, raised by what parses the bytes, is data."""
    import gzip
    import io

    import x2i.sources.files as files

    rows = [grit_row(k, f"A thing {k}.", [[0, 7, 0.1, 0.1, 0.9, 0.9, 0.9]]) for k in range(6)]
    write_self_contained(tmp_path, rows, images={k: jpeg(300, 200) for k in range(6)})
    tar = tmp_path / "00000.tar"
    data = tar.read_bytes()

    class Dropping(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > len(data) // 2:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(n)

    real_open = open
    monkeypatch.setattr(files, "open", lambda p, mode="r", *a, **k: Dropping(data) if str(p) == str(tar)
                        else real_open(p, mode, *a, **k), raising=False)
    with pytest.raises(SourceError, match="00000.tar: reading failed: ConnectionResetError.*not the data"):
        read_all(SourceConfig(format="grit", path=str(tmp_path)))
    monkeypatch.undo()
    (tmp_path / "00000.parquet").unlink()
    tar.with_suffix(".tar").write_bytes(gzip.compress(data)[: len(data) // 3] + b"\x00garbage" * 64)
    samples, ctx = read_all(SourceConfig(format="grit", path=str(tmp_path)))
    assert ctx.reject_counts["img2dataset_tar_truncated"] == 1
