"""The video / image_groups sources on real formats: clips written with OpenCV, WebVid's CSV, JSONL sidecars."""
import csv
import json

import numpy as np
import pytest

from x2i.core.errors import SourceError
from x2i.engine.recipe import SourceConfig
from x2i.shapes.clips import make_clip, write_clip
from x2i.sources import make_source
from x2i.engine.steps import Context


def read_all(src):
    ctx = Context()
    return [s for p in src.partitions() for s in src.read(p, ctx)], ctx


@pytest.fixture()
def clip_dir(tmp_path):
    root = tmp_path / "webvid"
    paths = [write_clip(make_clip(i, 5, 192, 128), root / "videos" / "000001_000010" / str(100 + i)) for i in range(3)]
    with open(root / "results_2M_val.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["videoid", "contentUrl", "duration", "page_dir", "name"])
        w.writeheader()
        for i in range(3):
            w.writerow({"videoid": 100 + i, "contentUrl": f"https://example.invalid/{100 + i}.mp4",
                        "duration": "PT00H00M03S", "page_dir": "000001_000010", "name": f"clip number {i}"})
        w.writerow({"videoid": 999, "contentUrl": "https://example.invalid/999.mp4", "duration": "PT00H00M03S",
                    "page_dir": "000001_000010", "name": "never downloaded"})
    return root, paths


def test_opencv_mp4_and_webvid_csv(clip_dir):
    root, paths = clip_dir
    assert all(p.suffix == ".mp4" and p.read_bytes()[4:8] == b"ftyp" for p in paths)  # a real MP4 container
    samples, ctx = read_all(make_source(SourceConfig(format="video", path=str(root))))
    assert [s.source_key for s in samples] == ["100", "101", "102"]
    assert ctx.reject_counts == {"video_missing": 1}  # row 999 has no file: counted, with its url
    assert ctx.rejects[0].meta["url"].endswith("999.mp4")
    s = samples[0]
    assert s.instruction == "clip number 0" and s.meta["fps"] == 8.0 and len(s.meta["frames"]) == 24
    truth = make_clip(0, 5, 192, 128).render(10).astype(np.float32)
    assert s.meta["frames"][10].shape == (128, 192, 3)
    assert np.abs(s.meta["frames"][10].astype(np.float32) - truth).mean() < 8  # mp4v compression only


def test_csv_without_webvid_columns_is_a_source_error(clip_dir, tmp_path):
    root, _ = clip_dir
    bad = tmp_path / "bad.csv"
    bad.write_text("id,caption\n100,hello\n")
    with pytest.raises(SourceError, match="missing column"):
        make_source(SourceConfig(format="video", path=str(bad), images=str(root))).partitions()


def test_jsonl_sidecar_frame_folder_and_corrupt_file(tmp_path):
    root = tmp_path / "clips"
    write_clip(make_clip(1, 5, 96, 64), root / "a")
    (root / "frames").mkdir(parents=True)
    import cv2

    for f in range(4):
        cv2.imwrite(str(root / "frames" / f"{f:04d}.png"), make_clip(2, 5, 96, 64).render(f)[..., ::-1])
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"video": "a.mp4", "caption": "a moving shape"}, {"video": "frames", "caption": "frame folder"},
        {"video": "broken.mp4", "caption": "corrupt"}]) + "\n")
    samples, ctx = read_all(make_source(SourceConfig(format="video", path=str(root))))
    assert [(s.source_key, len(s.meta["frames"])) for s in samples] == [("a.mp4", 24), ("frames", 4)]
    assert ctx.reject_counts == {"video_unreadable": 1}
    (root / "captions.jsonl").write_text('["not", "an", "object"]\n')
    from x2i.sources.video import read_captions

    read_captions.cache_clear()
    with pytest.raises(SourceError, match="not an object"):
        make_source(SourceConfig(format="video", path=str(root))).partitions()


def test_image_groups(tmp_path):
    from PIL import Image

    for g in ("red_star", "blue_cat"):
        (tmp_path / g).mkdir()
        for k in range(3):
            Image.fromarray(make_clip(3, 5, 96, 64).render(k * 8)).save(tmp_path / g / f"{k}.jpg")
    (tmp_path / "red_star" / "caption.txt").write_text("A red star.")
    samples, _ = read_all(make_source(SourceConfig(format="image_groups", path=str(tmp_path))))
    assert [(s.source_key, s.instruction, len(s.meta["frames"]), s.meta["temporal"]) for s in samples] == [
        ("blue_cat", "blue cat", 3, False), ("red_star", "A red star.", 3, False)]


def test_scene_cuts_found_where_the_world_cut(tmp_path):
    """The cut detector finds every hard cut of the embedded clips and nothing inside a shot."""
    from x2i.builders.in_context import cuts_of

    found = truth = 0
    for i in range(16):
        clip = make_clip(i, 0, 224, 160)
        frames = [clip.render(f) for f in range(clip.frames)]
        cuts, _ = cuts_of(frames, 0.045)
        assert cuts == clip.cuts, (i, cuts, clip.cuts)
        found, truth = found + len(cuts), truth + len(clip.cuts)
    assert truth >= 3
