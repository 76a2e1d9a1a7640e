"""The unified X2I Parquet schema (versioned) and the conversion between rows and `Sample`s.

Every file carries two metadata entries:
- `huggingface`: the `datasets` features, so `load_dataset("parquet", ...)` decodes `output_image` and every
  element of `input_images` as images with no extra arguments;
- `x2i`: the schema version, so readers can refuse files they do not understand.
"""
from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from x2i.core.imageio import EncodedImage
from x2i.core.sample import Sample

SCHEMA_VERSION = 1

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

ARROW_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("task", pa.string()),
    ("instruction", pa.string()),
    ("input_images", pa.list_(IMAGE_TYPE)),
    ("output_image", IMAGE_TYPE),
    ("source", pa.string()),
    ("source_key", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("meta", pa.string()),
    ("aesthetic", pa.float32()),
    ("clip_score", pa.float32()),
    ("phash", pa.string()),
])

_STRING = {"dtype": "string", "_type": "Value"}
# A JSON list holding one feature is the list-of-feature form every `datasets` version understands.
HF_FEATURES: dict[str, Any] = {
    "id": _STRING,
    "task": _STRING,
    "instruction": _STRING,
    "input_images": [{"_type": "Image"}],
    "output_image": {"_type": "Image"},
    "source": _STRING,
    "source_key": _STRING,
    "width": {"dtype": "int32", "_type": "Value"},
    "height": {"dtype": "int32", "_type": "Value"},
    "meta": _STRING,
    "aesthetic": {"dtype": "float32", "_type": "Value"},
    "clip_score": {"dtype": "float32", "_type": "Value"},
    "phash": _STRING,
}

SCHEMA = ARROW_SCHEMA.with_metadata({
    b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode(),
    b"x2i": json.dumps({"schema_version": SCHEMA_VERSION}).encode(),
})

COLUMNS = ARROW_SCHEMA.names


def image_struct(image: EncodedImage | None, name: str) -> dict[str, Any] | None:
    if image is None:
        return None
    ext = {"JPEG": "jpg", "PNG": "png"}.get(image.format, image.format.lower())
    return {"bytes": image.data, "path": image.path or f"{name}.{ext}"}


def _optional_float(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def sample_to_row(sample: Sample) -> dict[str, Any]:
    out = sample.output_image
    return {
        "id": sample.id,
        "task": sample.task,
        "instruction": sample.instruction,
        "input_images": [image_struct(im, f"{sample.id}_in{k}") for k, im in enumerate(sample.input_images, 1)],
        "output_image": image_struct(out, f"{sample.id}_out"),
        "source": sample.source,
        "source_key": sample.source_key,
        "width": out.width if out is not None else None,
        "height": out.height if out is not None else None,
        "meta": json.dumps(sample.meta, ensure_ascii=False, allow_nan=False),
        "aesthetic": _optional_float(sample.aesthetic),
        "clip_score": _optional_float(sample.clip_score),
        "phash": sample.phash,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    # Column by column: about 10x faster than Table.from_pylist on rows of image structs (measured).
    return pa.Table.from_arrays([pa.array([row.get(name) for row in rows], type=field.type)
                                 for name, field in zip(SCHEMA.names, SCHEMA)], schema=SCHEMA)


def _image_from_struct(struct: dict[str, Any] | None) -> EncodedImage | None:
    """Rebuild an EncodedImage from a stored struct; size is read from the header (cheap, no decode)."""
    if struct is None or struct.get("bytes") is None:
        return None
    from PIL import Image
    import io

    with Image.open(io.BytesIO(struct["bytes"])) as im:
        w, h, fmt = im.width, im.height, im.format or ""
    return EncodedImage(struct["bytes"], w, h, fmt, struct.get("path"))


def row_to_sample(row: dict[str, Any]) -> Sample:
    """The inverse of `sample_to_row` (images stay encoded until used)."""
    return Sample(
        task=row["task"],
        instruction=row["instruction"],
        output_image=_image_from_struct(row["output_image"]),
        input_images=[_image_from_struct(s) for s in (row["input_images"] or [])],
        source=row["source"],
        source_key=row["source_key"],
        meta=json.loads(row["meta"]) if row.get("meta") else {},
        aesthetic=row.get("aesthetic"),
        clip_score=row.get("clip_score"),
        phash=row.get("phash"),
        id=row["id"],
    )


def schema_version_of(arrow_schema: pa.Schema) -> int | None:
    """The x2i schema version a file declares, or None when it declares none."""
    meta = arrow_schema.metadata or {}
    if b"x2i" not in meta:
        return None
    try:
        return int(json.loads(meta[b"x2i"])["schema_version"])
    except (ValueError, KeyError, TypeError):
        return None
