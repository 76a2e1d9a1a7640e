"""Downloading a LAION parquet during the build, then retrying the failed URLs from the rejects ledger."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from helpers_curate import cli, rejects, rows, validate
from realformat import LAION_V1, scene_jpeg, write_parquet

from .loopback import Handler, LoopbackServer


def laion_row(url, text="Shapes on a background.", **over) -> dict:
    """A LAION v1 metadata row that every score filter passes."""
    return {"URL": url, "TEXT": text, "WIDTH": 448.0, "HEIGHT": 400.0, "similarity": 0.3, "hash": 7, "punsafe": 0.01,
            "pwatermark": 0.1, "aesthetic": 5.2, **over}


def download_recipe(path, meta, downloader: str, more: str = "") -> str:
    """A download-mode text-to-image recipe over the LAION parquet `meta`, written to `path`."""
    path.write_text(f"""
name: dl
builder: text_to_image
source:
  format: laion
  path: {meta}
  options:
    download: true
    downloader: {downloader}
{more}""")
    return str(path)


def laion_rows(base: str) -> list[dict]:
    def row(path, text="Shapes on a background.", **over):
        return laion_row(base + path if path else None, text, **over)

    return [row("/img/0.jpg"), row("/img/1.jpg"), row("/later.jpg"), row("/html"), row(None), row("/img/2.jpg", None),
            row("/noai"), row("/img/3.jpg", aesthetic=float("nan"))]


@pytest.fixture()
def server():
    files = {f"/img/{i}.jpg": scene_jpeg(20 + i) for i in range(4)}
    with LoopbackServer(files) as s:
        yield s


def test_download_mode_then_retry_from_rejects(tmp_path, monkeypatch, server):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    meta = write_parquet(tmp_path / "laion.parquet", laion_rows(server.base), LAION_V1)
    recipe = download_recipe(tmp_path / "r.yaml", meta, '{allow_networks: ["127.0.0.0/8"], timeout: 2.0, retries: 1, '
                             'backoff: 0.01, concurrency: 4}', "    rows_per_partition: 3\n")
    out = tmp_path / "out"
    result = cli("build", "--recipe", recipe, "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    assert manifest["rows"] == 2 and len(manifest["partitions"]) == 3
    assert manifest["rejects"] == {"download_http_error": 1, "download_not_image": 1, "url_missing": 1,
                                   "caption_missing": 1, "download_robots_disallowed": 1, "aesthetic_nan": 1}
    failed = {r["reason"]: json.loads(r["meta"]) for r in rejects(out)}
    assert failed["download_http_error"]["url"] == server.url("/later.jpg")
    assert failed["download_http_error"]["http_status"] == 404
    assert server.hits("/img/2.jpg") == 0  # no caption: never fetched

    # The missing image appears on the server; retry only the failed URLs from the ledger.
    Handler.files["/later.jpg"] = scene_jpeg(40)
    retry = tmp_path / "retry"
    result = cli("download", str(out), "--from-rejects", "-o", str(retry), "--allow-network", "127.0.0.0/8",
                 "--timeout", "2", "--retries", "0")
    assert result.exit_code == 0, result.output
    sidecar = pq.read_table(retry / "00000.parquet").to_pylist()
    status = {r["url"]: r["status"] for r in sidecar}
    assert status == {server.url("/later.jpg"): "success", server.url("/html"): "failed_to_download",
                      server.url("/noai"): "failed_to_download"}
    assert all(r["error_message"] for r in sidecar if r["status"] != "success")

    # The retried download joins the same LAION parquet: the row that failed is now built.
    again = tmp_path / "again"
    result = cli("build", "--task", "text-to-image", "--source", str(meta), "--images", str(retry), "-o", str(again),
                 "-q")
    assert result.exit_code == 0, result.output
    assert [json.loads(r["meta"])["url"] for r in rows(again)] == [server.url("/later.jpg")]


def test_download_cli_from_laion_parquet_keeps_columns(tmp_path, server):
    meta = write_parquet(tmp_path / "laion.parquet", laion_rows(server.base)[:4], LAION_V1)
    out = tmp_path / "dl"
    result = cli("download", str(meta), "-o", str(out), "--allow-network", "127.0.0.0/8", "--timeout", "2")
    assert result.exit_code == 0, result.output
    assert "downloaded 2/4" in result.stdout
    side = pq.read_table(out / "00000.parquet")
    assert {"url", "caption", "status", "error_message", "aesthetic", "pwatermark", "WIDTH"} <= set(side.column_names)
    assert side.column("aesthetic").type == LAION_V1.field("aesthetic").type
    assert (out / "00000.tar").exists() and (out / "00000_stats.json").exists()
    # without the explicit allowance, loopback URLs are refused, and each refusal is recorded
    refused = tmp_path / "refused"
    result = cli("download", str(meta), "-o", str(refused), "--timeout", "2")
    assert result.exit_code == 0 and "downloaded 0/4" in result.stdout
    assert {r["error_message"].split(":")[0] for r in pq.read_table(refused / "00000.parquet").to_pylist()} == \
        {"blocked_address"}


def test_download_mode_decodes_large_jpegs_reduced_and_fits_them_like_a_full_decode(tmp_path, monkeypatch):
    """A fetched JPEG at least twice the output size is decoded at a reduced scale (imageio.load fit_side):
    the rows equal, in URLs, sizes and transforms, and within 35 dB in pixels, those built from the same images
    downloaded first (`x2i download`, read back at full size)."""
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    from x2i.core import imageio

    photos = [Image.fromarray(getattr(data, n)()).resize((1100, 700 + 90 * i)) for i, n in
              enumerate(("astronaut", "coffee", "chelsea"))]
    files = {}
    for i, im in enumerate(photos):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        files[f"/img/{i}.jpg"] = buf.getvalue()
    reduced = []
    real_load = imageio.load
    monkeypatch.setattr("x2i.sources.laion.load", lambda *a, **k: reduced.append(
        (im := real_load(*a, **k))._reduced is not None) or im)
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    with LoopbackServer(files) as s:
        listed = [laion_row(s.base + p, "A photo of something.", WIDTH=1100.0, HEIGHT=700.0) for p in files]
        meta = write_parquet(tmp_path / "laion.parquet", listed, LAION_V1)
        recipe = download_recipe(tmp_path / "r.yaml", meta, '{allow_networks: ["127.0.0.0/8"], timeout: 5.0, retries: 0}',
                                 "output: {max_side: 256}\n")
        fetched = cli("build", "--recipe", recipe, "-o", str(tmp_path / "a"), "-q")
        assert fetched.exit_code == 0, fetched.output
        assert reduced == [True, True, True]
        got = cli("download", str(meta), "-o", str(tmp_path / "dl"), "--allow-network", "127.0.0.0/8")
        assert got.exit_code == 0, got.output
    full = cli("build", "--task", "text-to-image", "--source", str(meta), "--images", str(tmp_path / "dl"), "-o",
               str(tmp_path / "b"), "-q", "--set", "output.max_side=256")
    assert full.exit_code == 0, full.output
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [json.loads(r["meta"])["url"] for r in a] == [json.loads(r["meta"])["url"] for r in b] and len(a) == 3
    for x, y in zip(a, b):
        mx, my = json.loads(x["meta"]), json.loads(y["meta"])
        assert (x["width"], x["height"]) == (y["width"], y["height"]) and max(x["width"], x["height"]) <= 256
        assert mx["output_transform"] == my["output_transform"] and mx["source_size"] == my["source_size"]
        px, py = (np.asarray(Image.open(io.BytesIO(r["output_image"]["bytes"])), dtype=np.float64) for r in (x, y))
        assert 10 * np.log10(255.0 ** 2 / np.mean((px - py) ** 2)) >= 35.0
