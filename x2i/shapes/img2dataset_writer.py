"""Write records exactly as img2dataset's webdataset output does (used for the embedded sample and tests).

Per shard `{shard:05d}`: a tar of `{key}.jpg` / `{key}.txt` / `{key}.json` (members sorted by extension per
key, as webdataset's TarWriter writes them), a sidecar `{shard:05d}.parquet` with one row per URL tried, and
`{shard:05d}_stats.json`. Keys are the shard number (5 digits) followed by the index in the shard (4 digits).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class DownloadRecord:
    """One URL as img2dataset saw it: the image bytes (None if the download failed) and its metadata."""

    url: str
    caption: str | None
    image: bytes | None
    width: int | None = None
    height: int | None = None
    status: str = "success"  # success | failed_to_download | failed_to_resize
    error_message: str | None = None
    additional: dict[str, Any] = field(default_factory=dict)  # --save_additional_columns values


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic archives
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """One img2dataset shard written record by record: the tar grows as records come, so image bytes are not held
    for the whole shard (only the sidecar rows are, without the images)."""

    def __init__(self, out_dir: Path, shard: int, additional_schema: list[tuple[str, pa.DataType]],
                 samples_per_shard: int = 10000):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.shard, self.additional_schema = out_dir, shard, additional_schema
        self.digits = len(str(samples_per_shard - 1))
        self.rows: list[dict[str, Any]] = []
        self.tar = tarfile.open(out_dir / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT)

    def add(self, rec: DownloadRecord) -> None:
        key = f"{self.shard:05d}{len(self.rows):0{self.digits}d}"
        ok = rec.status == "success" and rec.image is not None
        meta = {
            "url": rec.url, "caption": rec.caption, "key": key,
            "status": rec.status if ok or rec.status != "success" else "failed_to_download",
            "error_message": rec.error_message,
            "width": rec.width if ok else None, "height": rec.height if ok else None,
            "original_width": rec.width if ok else None, "original_height": rec.height if ok else None,
            "exif": None,
            "sha256": hashlib.sha256(rec.image).hexdigest() if ok else None,
            **rec.additional,
        }
        self.rows.append(meta)
        if ok:  # webdataset's TarWriter writes a sample's members in sorted extension order
            _add_member(self.tar, f"{key}.jpg", rec.image)
            _add_member(self.tar, f"{key}.json", json.dumps(meta, indent=4).encode())
            _add_member(self.tar, f"{key}.txt", (rec.caption or "").encode())

    def abort(self) -> None:
        """Close the tar and write no sidecar: a shard without its parquet is visibly unfinished."""
        self.tar.close()

    def close(self) -> None:
        """Finish the tar, then write the sidecar parquet and the stats."""
        self.tar.close()
        out_dir, shard, rows = self.out_dir, self.shard, self.rows
        schema = pa.schema([
            ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
            ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
            ("original_width", pa.int64()), ("original_height", pa.int64()), ("exif", pa.string()),
            ("sha256", pa.string()), *self.additional_schema,
        ])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out_dir / f"{shard:05d}.parquet")
        successes = sum(r["status"] == "success" for r in rows)
        status_dict = {}
        for r in rows:
            label = r["status"] if r["status"] == "success" else (r["error_message"] or r["status"])
            status_dict[label] = status_dict.get(label, 0) + 1
        stats = {"count": len(rows), "successes": successes,
                 "failed_to_download": sum(r["status"] == "failed_to_download" for r in rows),
                 "failed_to_resize": sum(r["status"] == "failed_to_resize" for r in rows),
                 "duration": 0.0, "start_time": 0.0, "end_time": 0.0, "status_dict": status_dict}
        (out_dir / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))


def write_shard(out_dir: Path, shard: int, records: list[DownloadRecord],
                additional_schema: list[tuple[str, pa.DataType]], samples_per_shard: int = 10000) -> None:
    """Write one img2dataset webdataset shard (tar + sidecar parquet + stats)."""
    writer = ShardWriter(out_dir, shard, additional_schema, samples_per_shard)
    try:
        for rec in records:
            writer.add(rec)
    except BaseException:
        writer.abort()
        raise
    writer.close()
