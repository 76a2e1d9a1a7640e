"""Source paths that are object-store URIs: formats that cannot read them refuse in one line naming the format,
and a URI with a slash missing is never taken for a local folder (the S3 reads themselves: tests/core/
test_object_storage.py, against a local S3 server)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from x2i.cli.main import app
from x2i.sources.files import UriPath, relative


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("x2i: error: "), result.output
    return lines[0]


@pytest.mark.parametrize("option, fmt", [("--source", "seed_data_edit"), ("--images", "seed_data_edit")])
def test_a_format_that_reads_local_files_only_refuses_a_uri_naming_itself(tmp_path, monkeypatch, option, fmt):
    monkeypatch.chdir(tmp_path)
    args = ["build", "--task", "image-edit", "--format", fmt, option, "s3://bucket/data", "--out",
            str(tmp_path / "out")]
    line = one_error_line(CliRunner().invoke(app, args))
    assert f"source format '{fmt}' reads local files only" in line and "s3://bucket/data" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["s3:/bucket/images", "s3:bucket", "gs:/b/p"])
def test_a_mangled_source_uri_is_refused(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    line = one_error_line(CliRunner().invoke(app, ["build", "--task", "text-to-image", "--images", target,
                                                   "--out", str(tmp_path / "out")]))
    assert "'/' missing" in line and list(tmp_path.iterdir()) == []


def test_uri_paths_keep_their_scheme_and_names():
    shard = UriPath("s3://bucket/laion/images/00001.tar")
    assert str(shard.with_suffix(".parquet")) == "s3://bucket/laion/images/00001.parquet"
    assert (shard.name, shard.stem, shard.suffix) == ("00001.tar", "00001", ".tar")
    assert str(shard.parent) == "s3://bucket/laion/images"
    assert relative(str(shard), UriPath("s3://bucket/laion")) == "images/00001.tar"
