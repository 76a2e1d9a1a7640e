"""Canny and lineart-standard: same pixels as the raw library call, any input mode, exact geometry on shapes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from x2i.annotators import ANNOTATORS, AnnotatorError, create
from x2i.shapes.world import make_scene


def test_canny_is_opencv_canny(photo):
    import cv2

    ann = create("canny", {"low_threshold": 50, "high_threshold": 120})
    (res,) = ann([photo])
    assert res.ok and res.image.mode == "L" and res.image.size == photo.size
    assert np.array_equal(np.asarray(res.image), cv2.Canny(np.asarray(photo), 50, 120))


def test_lineart_standard_is_the_controlnet_aux_call(photo):
    from controlnet_aux.lineart_standard import LineartStandardDetector

    (res,) = create("lineart_standard", {"detect_resolution": 128})([photo])
    raw = LineartStandardDetector()(np.asarray(photo), detect_resolution=128, output_type="np")
    assert res.image.mode == "L" and res.image.size == photo.size
    assert np.array_equal(np.asarray(res.image), raw[..., 0])


@pytest.mark.parametrize("name", ["canny", "lineart_standard"])
def test_any_input_mode_gives_a_map_of_its_size(name, odd_inputs):
    results = create(name)(odd_inputs)
    assert [r.image.size for r in results] == [im.size for im in odd_inputs]
    assert all(r.image.mode == "L" for r in results)
    # grayscale and RGB of the same pixels agree for Canny (the RGB has equal gradients in all channels)
    if name == "canny":
        gray = odd_inputs[0].convert("RGB")
        assert np.array_equal(np.asarray(create(name)([gray])[0].image), np.asarray(results[0].image))


def test_tiny_images_are_refused_with_a_reason():
    res = create("canny")([Image.new("RGB", (12, 40)), Image.new("RGB", (40, 40), (9, 9, 9))])
    assert res[0].reason == "image_too_small" and not res[0].ok
    assert res[1].ok and res[1].image.size == (40, 40)


def test_canny_edges_lie_on_shape_boundaries():
    """On a plain-background shapes scene, every Canny edge pixel is within 2 px of a true shape boundary."""
    from scipy import ndimage

    scene = next((s for s in (make_scene(i, 0, 256, 256) for i in range(40)) if s.background.kind == "plain"), None)
    assert scene is not None, "the shapes world (deterministic) has no plain-background scene among the first 40"
    (res,) = create("canny")([scene.render()])
    edges = np.asarray(res.image) > 0
    union = np.zeros((256, 256), bool)
    for m in scene.masks(visible=False):
        union |= m
    boundary = union ^ ndimage.binary_erosion(union)
    near = ndimage.binary_dilation(boundary, iterations=2)
    assert edges.sum() > 50
    assert not (edges & ~near).any()
    assert (boundary & ndimage.binary_dilation(edges, iterations=2)).mean() / boundary.mean() > 0.9


def test_unknown_annotator_and_bad_options():
    with pytest.raises(AnnotatorError, match="unknown annotator 'cany'"):
        create("cany")
    with pytest.raises(Exception, match="unknown key"):
        create("canny", {"low": 3})


def test_full_version_names_annotator_and_library():
    ann = create("canny")
    assert ann.full_version.startswith("canny-1 (opencv-python-headless==")
    assert ann.describe()["options"] == {"low_threshold": 100, "high_threshold": 200}
    assert set(ANNOTATORS) >= {"canny", "lineart_standard", "hed", "lineart", "depth_midas", "depth_dpt",
                               "depth_anything", "openpose", "seg_upernet", "sam"}
