"""`x2i generate` end to end on CPU with the tiny checkpoint."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from x2i.cli.main import app  # noqa: E402


def _generate(tiny_dir, out, *extra):
    args = ["generate", "--model", str(tiny_dir), "--prompt", "a red circle", "--steps", "2", "--height", "32",
            "--width", "48", "--seed", "5", "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def test_generate_writes_a_png(tiny_dir, tmp_path):
    result = _generate(tiny_dir, tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "a.png") as im:
        im.verify()
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.size == (48, 32) and im.mode == "RGB"
    assert _generate(tiny_dir, tmp_path / "b.png").exit_code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same seed, same file


def test_generate_with_input_image(tiny_dir, tmp_path):
    Image.new("RGB", (50, 40), (250, 20, 20)).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, [
        "generate", "--model", str(tiny_dir), "--prompt", "<img><|image_1|></img> in blue", "--input-image",
        str(tmp_path / "in.png"), "--steps", "2", "--input-size-as-output", "--seed", "0",
        "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (48, 32)


@pytest.mark.parametrize("extra, message", [
    (["--input-image", "missing.png"], "input image missing.png not found"),
    (["--height", "40"], "height 40 is not a positive multiple of 16"),
    (["--dtype", "fp8"], "--dtype must be one of"),
])
def test_generate_user_errors(tiny_dir, tmp_path, extra, message):
    result = _generate(tiny_dir, tmp_path / "x.png", *extra)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_placeholder_mismatch_is_a_user_error(tiny_dir, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    result = _generate(tiny_dir, tmp_path / "x.png", "--input-image", str(tmp_path / "in.png"))
    assert result.exit_code == 2 and "0 placeholder(s) for 1 input image(s)" in result.output


def test_generate_with_a_pixel_codec_checkpoint(tmp_path):
    """A tiny model that uses no pretrained VAE at all (what issue 6 trains on CPU) generates through the CLI."""
    from x2i.model.testing.tiny import make_tiny_checkpoint

    root = make_tiny_checkpoint(tmp_path / "pixel", pixel_codec_factor=2)
    result = _generate(root, tmp_path / "p.png", "--height", "16", "--width", "24")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == (24, 16)


def test_generate_without_a_recorded_size_keeps_the_1024_default(tiny_dir, tmp_path):
    """A checkpoint that records no training size (every folder written before it was recorded, and downloaded
    ones) defaults to 1024 x 1024 as before: more than the tiny model's position grid, so a clear user error."""
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_dir), "--prompt", "a red circle", "--steps", "1",
                                      "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "1024x1024 is larger than the model's position grid" in result.output
