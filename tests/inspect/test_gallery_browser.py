"""The gallery in headless Chromium, opened from file:// with no server: loads without console errors, every
image loads, the task filter works (buttons and URL hash), a click shows the sample's meta."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cdp import Browser, find_chromium
from x2i.inspect.gallery import GalleryConfig, build_gallery
from x2i.engine.shards import iter_rows, shard_files

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; "
                                                          "CI's .ci/run installs it)")

VISIBLE_TASKS = "[...document.querySelectorAll('section.task')].filter(s => s.offsetParent !== null).map(s => s.dataset.task)"
IMAGES_LOADED = "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


@pytest.fixture
def browser(tmp_path):
    b = Browser(CHROMIUM, tmp_path / "profile")
    yield b
    b.close()


def _screenshot(browser: Browser, tmp_path: Path, name: str) -> None:
    browser.screenshot(tmp_path / name)
    # Set X2I_SCREENSHOTS=DIR to keep the screenshots for a human to look at.
    if os.environ.get("X2I_SCREENSHOTS"):
        Path(os.environ["X2I_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(os.environ["X2I_SCREENSHOTS"]) / name)


def test_gallery_in_headless_chromium(mixed_dataset, tmp_path, browser):
    result = build_gallery(mixed_dataset, tmp_path / "gallery", GalleryConfig(per_task=3))
    tasks = list(result.tasks)
    url = (tmp_path / "gallery" / "index.html").resolve().as_uri()
    browser.open(url)
    assert browser.console_errors() == []
    expected_images = sum(1 + len(r["input_images"]) for d in json.loads(browser.eval(
        "document.getElementById('samples').textContent")) for r in [_row(mixed_dataset, d["id"])])
    assert browser.eval("document.images.length") == expected_images
    assert browser.eval(IMAGES_LOADED) == []
    assert browser.eval(VISIBLE_TASKS) == tasks
    _screenshot(browser, tmp_path, "gallery-all.png")

    # filter by task: a real click on the button
    browser.click('#filter button[data-task="vision/canny"]')
    assert browser.eval(VISIBLE_TASKS) == ["vision/canny"]
    assert browser.eval("location.hash") == "#task=vision%2Fcanny"
    assert browser.eval("document.querySelector('#filter button[aria-pressed=true]').dataset.task") == "vision/canny"
    # meta on click: the dialog shows this sample's id and meta
    browser.click("section.task[data-task='vision/canny'] .sample")
    assert browser.eval("document.getElementById('detail').open") is True
    shown = json.loads(browser.eval("document.getElementById('detail-body').textContent"))
    row = _row(mixed_dataset, shown["id"])
    assert row["task"] == "vision/canny" and shown["meta"] == json.loads(row["meta"])
    _screenshot(browser, tmp_path, "gallery-detail.png")
    browser.click("#detail button.close")
    assert browser.eval("document.getElementById('detail').open") is False
    browser.click('#filter button[data-task=""]')
    assert browser.eval(VISIBLE_TASKS) == tasks

    # the filter also comes from the URL (a bookmark or a shared link)
    browser.open(url + "#task=few_shot%2Fimage_edit")
    assert browser.eval(VISIBLE_TASKS) == ["few_shot/image_edit"]
    assert browser.eval("document.querySelectorAll('section.task[data-task=\"few_shot/image_edit\"] .prompt img').length") == 6
    assert browser.console_errors() == []


def test_a_missing_thumbnail_is_caught(mixed_dataset, tmp_path, browser):
    """The checks above can fail: delete one thumbnail and the page reports it."""
    build_gallery(mixed_dataset, tmp_path / "gallery", GalleryConfig(per_task=1))
    victim = sorted((tmp_path / "gallery" / "thumbs").iterdir())[0]
    victim.unlink()
    browser.open((tmp_path / "gallery" / "index.html").resolve().as_uri())
    assert any(victim.name in src for src in browser.eval(IMAGES_LOADED))
    assert any("ERR_FILE_NOT_FOUND" in e for e in browser.console_errors())


def _row(root: Path, rid: str) -> dict:
    for f in shard_files(root):
        for r in iter_rows(f):
            if r["id"] == rid:
                return r
    raise KeyError(rid)
