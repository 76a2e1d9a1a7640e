"""Column types of source Parquet files, checked before a build starts.

A column of the wrong type (a LAION `TEXT` that is a list, a GRIT `url` stored as int64, an img2dataset `jpg`
that is not binary) is not a bad row but a wrong file: every row would be rejected. So the build stops before
any work with one line naming the file, the column, its type and the type expected (`SourceError`, exit 2).
A column that is all null (Arrow type `null`) fits any expectation: it holds no value of the wrong type.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.errors import SourceError

_KINDS: dict[str, Callable[[pa.DataType], bool]] = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
    "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
    or pa.types.is_binary_view(t),
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t),
    "list": lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t),
    # an HF `Image()` column: struct<bytes: binary, path: string>
    "image": lambda t: pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
    and _KINDS["binary"](t.field(t.get_field_index("bytes")).type),
    "bool": pa.types.is_boolean,
}

# img2dataset's output columns (parquet shards and tar sidecars), shared by every reader of them.
IMG2DATASET_TYPES: dict[str, tuple[str, ...]] = {
    "key": ("string",), "url": ("string",), "caption": ("string",), "status": ("string",),
    "error_message": ("string",), "width": ("number",), "height": ("number",),
    "original_width": ("number",), "original_height": ("number",), "sha256": ("string",),
    "jpg": ("binary",), "png": ("binary",), "webp": ("binary",), "image": ("binary", "image"),
}


def read_schema(path: str | Path) -> pa.Schema:
    from x2i.sources.files import read_schema as read  # a local path, or an object-store URI

    try:
        return read(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(path, f"not a readable parquet file ({exc})") from None


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def check_types(where: Any, schema: pa.Schema, expected: dict[str, tuple[str, ...]]) -> None:
    """SourceError for the first present column whose type is none of the expected kinds."""
    for name, kinds in expected.items():
        index = schema.get_field_index(name)
        if index < 0:
            continue  # presence is each reader's own rule (some columns are optional)
        t = _value_type(schema.field(index).type)
        if pa.types.is_null(t) or any(_KINDS[k](t) for k in kinds):
            continue
        raise SourceError(where, f"column '{name}' has type {t}, expected {' or '.join(kinds)}; is this file "
                                 "really in the source format the recipe names?")


def check_file(path: str | Path, expected: dict[str, tuple[str, ...]]) -> pa.Schema:
    """Read `path`'s schema and check its column types; returns the schema."""
    schema = read_schema(path)
    check_types(path, schema, expected)
    return schema
