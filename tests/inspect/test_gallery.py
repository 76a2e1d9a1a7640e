"""`x2i view`: what goes into the gallery page and its thumbnails (the browser tests are in test_gallery_browser.py)."""
from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from x2i.cli.main import app
from x2i.inspect.gallery import GalleryConfig, build_gallery
from x2i.core.prompt import split
from x2i.engine.shards import iter_rows, shard_files


class Page(HTMLParser):
    """Sections, samples and the order of text and images inside each sample's prompt."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, list[dict]] = {}
        self.samples_json = None
        self._task = self._sample = None
        self._in_prompt = self._in_json = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._task = a["data-task"]
            self.sections[self._task] = []
        elif tag == "article":
            self._sample = {"index": int(a["data-index"]), "prompt": [], "output": None}
            self.sections[self._task].append(self._sample)
        elif tag == "div" and a.get("class") == "prompt":
            self._in_prompt = True
        elif tag == "img" and self._sample is not None:
            if "in" == a["class"]:
                self._sample["prompt"].append(("img", a["src"]))
            else:
                self._sample["output"] = a["src"]
        elif tag == "script" and a.get("id") == "samples":
            self._in_json = True

    def handle_endtag(self, tag):
        if tag == "div" and self._in_prompt:
            self._in_prompt = False
        elif tag == "script":
            self._in_json = False

    def handle_data(self, data):
        if self._in_prompt and self._sample is not None:
            self._sample["prompt"].append(("text", data))
        elif self._in_json:
            self.samples_json = json.loads(data)


def _thumb_name(data: bytes, side: int = 256) -> str:
    ext = "png" if data.startswith(b"\x89PNG") else "jpg"
    return f"thumbs/{hashlib.sha1(data).hexdigest()[:20]}-{side}.{ext}"


def _rows_by_id(root: Path) -> dict[str, dict]:
    return {r["id"]: r for f in shard_files(root) for r in iter_rows(f)}


def test_gallery_places_input_images_where_their_placeholders_are(mixed_dataset, tmp_path):
    result = build_gallery(mixed_dataset, tmp_path / "g", GalleryConfig(per_task=3))
    page = Page((tmp_path / "g" / "index.html").read_text())
    rows = _rows_by_id(mixed_dataset)
    tasks = sorted({r["task"] for r in rows.values()})
    assert list(page.sections) == tasks  # one section per task with rows; the zero-row task has none
    assert result.broken == []
    for task, samples in page.sections.items():
        assert len(samples) == min(3, sum(r["task"] == task for r in rows.values()))
        for sample in samples:
            detail = page.samples_json[sample["index"]]
            row = rows[detail["id"]]
            assert row["task"] == task and detail["meta"] == json.loads(row["meta"])
            # the prompt, in order: each text piece, and input k's thumbnail where <img><|image_k|></img> was
            expected = [("img", _thumb_name(row["input_images"][p - 1]["bytes"])) if isinstance(p, int)
                        else ("text", p) for p in split(row["instruction"])]
            assert sample["prompt"] == expected
            assert sample["output"] == _thumb_name(row["output_image"]["bytes"])
    few_shot = page.sections["few_shot/image_edit"][0]
    assert [kind for kind, _ in few_shot["prompt"]] == ["text", "img", "text", "img", "text", "img", "text"]


def test_thumbnails_are_small_shared_and_written_once(mixed_dataset, tmp_path):
    out = tmp_path / "g"
    first = build_gallery(mixed_dataset, out, GalleryConfig(per_task=10, thumb_side=64))
    page = Page((out / "index.html").read_text())
    refs = [src for samples in page.sections.values() for s in samples
            for src in [s["output"]] + [v for k, v in s["prompt"] if k == "img"]]
    files = sorted(p.name for p in (out / "thumbs").iterdir())
    assert sorted({Path(r).name for r in refs}) == files  # every referenced thumbnail exists, nothing else
    # vision/canny inputs and control/canny outputs are the same photos: one file serves both
    assert first.thumbs_written == len(files) < len(refs)
    for name in files:
        with Image.open(out / "thumbs" / name) as im:
            assert max(im.size) <= 64
    again = build_gallery(mixed_dataset, out, GalleryConfig(per_task=10, thumb_side=64))
    assert again.thumbs_written == 0 and again.thumbs_reused == len(files)
    fewer = build_gallery(mixed_dataset, out, GalleryConfig(per_task=1, thumb_side=64))
    assert fewer.thumbs_written == 0
    assert len(list((out / "thumbs").iterdir())) < len(files)  # thumbnails no sample uses are pruned


def test_sample_choice_is_seeded(mixed_dataset, tmp_path):
    def shown(seed):
        build_gallery(mixed_dataset, tmp_path / f"s{seed}", GalleryConfig(per_task=2, seed=seed))
        return [d["id"] for d in Page((tmp_path / f"s{seed}" / "index.html").read_text()).samples_json]

    assert shown(0) == shown(0)
    assert any(shown(seed) != shown(0) for seed in (1, 2, 3))


def test_view_cli_task_filter_and_errors(mixed_dataset, tmp_path):
    out = tmp_path / "g"
    result = CliRunner().invoke(app, ["view", str(mixed_dataset), "--out", str(out), "--task", "vision/mask",
                                      "--task", "text_to_image", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert list(Page((out / "index.html").read_text()).sections) == ["text_to_image", "vision/mask"]
    assert "file://" in result.output
    bad = CliRunner().invoke(app, ["view", str(mixed_dataset), "--out", str(out), "--task", "nope"])
    assert bad.exit_code == 2 and "no rows of task(s) ['nope']" in bad.output
    empty = CliRunner().invoke(app, ["view", str(tmp_path / "missing"), "--out", str(out)])
    assert empty.exit_code == 2 and "no parquet shards" in empty.output


def test_page_text_is_escaped(tmp_path):
    """Instructions and meta are data: markup in them must not become markup in the page."""
    from x2i.core.imageio import encode
    from x2i.core.sample import Sample
    from x2i.engine.shards import PartitionWriter

    writer = PartitionWriter(tmp_path / "ds", 0)
    image = encode(Image.new("RGB", (32, 32), (200, 30, 30)))
    writer.write(Sample("text_to_image", "a <b>bold</b> </script><script>alert(1)</script> claim", image,
                        meta={"note": "</script><img src=x onerror=alert(2)>"}).with_id(0))
    writer.commit()
    build_gallery(tmp_path / "ds", tmp_path / "g")
    text = (tmp_path / "g" / "index.html").read_text()
    assert "<b>" not in text and "alert(1)</script>" not in text and "onerror=alert(2)>" not in text
    page = Page(text)
    assert page.samples_json[0]["meta"]["note"] == "</script><img src=x onerror=alert(2)>"
    assert len(re.findall(r"<script", text)) == 2


def test_gallery_refuses_to_write_over_other_files(mixed_dataset, tmp_path):
    mine = tmp_path / "site"
    mine.mkdir()
    (mine / "index.html").write_text("<html>my page</html>")
    result = CliRunner().invoke(app, ["view", str(mixed_dataset), "--out", str(mine)])
    assert result.exit_code == 2 and "not an x2i gallery" in result.output
    assert (mine / "index.html").read_text() == "<html>my page</html>"
    build_gallery(mixed_dataset, tmp_path / "g")
    build_gallery(mixed_dataset, tmp_path / "g")  # an earlier gallery is fine to replace
