"""Weight-based annotators with random weights saved in the exact layout their loaders read.

Each test writes the real network's random weights where a user's download would be (the controlnet_aux
checkpoint files, or a transformers save_pretrained folder) and loads them back through the same resolution
and loading code a real checkpoint goes through. Outputs of random weights are noise: these tests check
loading, batching, sizes and modes, and agreement with the library's own one-image call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from x2i.annotators import AnnotatorError, create
from x2i.annotators import random_weights as rw


def _in_hf_cache(tmp_path: Path, repo: str) -> Path:
    snap = tmp_path / "hf-cache" / ("models--" + repo.replace("/", "--")) / "snapshots" / "deadbeef"
    (snap.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snap.parent.parent / "refs" / "main").write_text("deadbeef")
    return snap


@pytest.fixture(scope="module")
def annotators_repo(weights_tmp) -> Path:
    """lllyasviel/Annotators as X2I_ANNOTATOR_DIR lays it out: <dir>/lllyasviel/Annotators/<files>."""
    root = weights_tmp / "annotator-dir"
    for name in ("hed", "lineart", "openpose_full"):
        rw.write(name, root / "lllyasviel" / "Annotators")
    return root


@pytest.mark.parametrize("name,mode", [("hed", "L"), ("lineart", "L")])
def test_controlnet_aux_edges_from_annotator_dir(name, mode, annotators_repo, monkeypatch, odd_inputs):
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(annotators_repo))
    ann = create(name, {"detect_resolution": 64}, batch_size=2)
    assert ann.resolve_weights()[0].where == "X2I_ANNOTATOR_DIR"
    results = ann(odd_inputs)
    assert [r.image.size for r in results] == [im.size for im in odd_inputs]
    assert all(r.image.mode == mode for r in results)
    assert ann.describe()["weights"][0]["files"]


def test_hed_batch_matches_the_library_call(annotators_repo, monkeypatch):
    """Our batched forward gives controlnet_aux's one-image result (interpolation differs by at most 2 levels)."""
    from controlnet_aux import HEDdetector

    rng = np.random.default_rng(1)
    images = [Image.fromarray((rng.random((128, 192, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    d = annotators_repo / "lllyasviel" / "Annotators"
    ours = create("hed", {"detect_resolution": 128}, weights=str(d), batch_size=3)(images)
    lib = HEDdetector.from_pretrained(str(d))
    for im, res in zip(images, ours):
        raw = np.asarray(lib(im, detect_resolution=128, image_resolution=128, output_type="np"))[..., 0]
        diff = np.abs(raw.astype(int) - np.asarray(res.image).astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.5


def test_midas_checkpoint_file_loads_and_matches_the_library(weights_tmp):
    """dpt_hybrid-midas-501f0c75.pt (the real checkpoint's file name and keys) through an explicit path."""
    from controlnet_aux import MidasDetector

    d = rw.write("depth_midas", weights_tmp / "midas")
    assert (d / "dpt_hybrid-midas-501f0c75.pt").is_file()
    rng = np.random.default_rng(2)
    images = [Image.fromarray((rng.random((128, 192, 3)) * 255).astype(np.uint8)), Image.new("RGB", (64, 64), 7)]
    ann = create("depth_midas", {"detect_resolution": 128}, weights=str(d))
    results = ann(images)
    assert results[0].ok and results[0].image.size == (192, 128) and results[0].image.mode == "L"
    # the library's own one-image call on the network our loader built from the file (one 500 MB load, not two)
    raw = np.asarray(MidasDetector(ann._model)(images[0], detect_resolution=128, image_resolution=128,
                                               output_type="np"))[..., 0]
    assert np.abs(raw.astype(int) - np.asarray(results[0].image).astype(int)).max() <= 1
    assert results[1].image is not None or results[1].reason == "depth_flat"


@pytest.mark.parametrize("name,mode", [("depth_anything", "L"), ("depth_dpt", "L"), ("seg_upernet", "RGB")])
def test_transformers_models_from_the_hf_cache(name, mode, tmp_path, odd_inputs):
    """A save_pretrained folder placed as a Hugging Face cache snapshot, found with no path given."""
    repo = create(name).weight_specs()[0].repo_id
    rw.write(name, _in_hf_cache(tmp_path, repo))
    ann = create(name, batch_size=2)
    assert ann.resolve_weights()[0].where == "hf-cache"
    images = odd_inputs + [odd_inputs[3].copy()]  # two same-size images share a batch
    results = ann(images)
    assert [r.image.size for r in results] == [im.size for im in images]
    assert all(r.image.mode == mode for r in results)
    if name == "seg_upernet":
        from x2i.annotators.segmentation import palette

        colours = {tuple(c) for c in palette(150)}
        assert {tuple(c) for c in np.asarray(results[0].image).reshape(-1, 3)} <= colours
        assert results[0].info["labels"] and all(lab.startswith("class_") for lab in results[0].info["labels"])


def test_sam_box_masks(tmp_path, photo):
    d = rw.write("sam", tmp_path / "sam")
    ann = create("sam", weights=str(d))
    (masks, scores), (none, _) = ann.masks([photo, photo], [[(10, 20, 90, 150), (0, 0, 191, 191)], []])
    assert len(masks) == len(scores) == 2 and none == []
    assert all(m.shape == (192, 192) and m.dtype == bool for m in masks)
    with pytest.raises(AnnotatorError, match="box-prompted"):
        ann([photo])


def test_openpose_random_weights_find_no_person(annotators_repo, monkeypatch, photo):
    """Random weights find nobody: the annotator says so with a reason instead of drawing an empty skeleton.
    openpose_full loads all three CMU checkpoints (body, hand, face) through the same layout."""
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(annotators_repo))
    ann = create("openpose_full", {"detect_resolution": 128})
    assert [r.files for r in ann.resolve_weights()] == [("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")]
    (res,) = ann([photo])
    assert not res.ok and res.reason == "no_person_found"


def test_gpu_requested_without_one(monkeypatch):
    import torch

    # A machine without CUDA, also where there is one (so the test runs everywhere).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AnnotatorError, match="cuda"):
        create("hed", device="cuda")
    assert create("hed", device="auto").device == "cpu"
    assert create("canny", device="cuda").device == "cpu"  # OpenCV annotators run on the CPU whatever the device
