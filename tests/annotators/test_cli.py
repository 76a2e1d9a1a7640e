"""`x2i annotators list|fetch` and `x2i build --annotators` as a user runs them."""
from __future__ import annotations

from typer.testing import CliRunner

from x2i.annotators import random_weights
from x2i.cli.main import app


def test_list_shows_weights_and_where_they_are(tmp_path, monkeypatch):
    runner = CliRunner()
    out = runner.invoke(app, ["annotators", "list"]).output
    assert "canny" in out and "no weights" in out
    assert "ControlNetHED.pth" in out and "missing (x2i annotators fetch hed)" in out
    random_weights.write("hed", tmp_path / "lllyasviel" / "Annotators")
    monkeypatch.setenv("X2I_ANNOTATOR_DIR", str(tmp_path))
    out = runner.invoke(app, ["annotators", "list"]).output
    hed = out[out.index("hed "):]
    assert f"ready (X2I_ANNOTATOR_DIR: {tmp_path / 'lllyasviel' / 'Annotators'})" in hed.splitlines()[1]


def test_fetch_offline_is_one_line_and_exit_2(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["annotators", "fetch", "depth_midas"])
    assert result.exit_code == 2 and "HF_HUB_OFFLINE" in result.output
    result = CliRunner().invoke(app, ["annotators", "fetch", "canny"])
    assert result.exit_code == 0 and "needs no weights" in result.output


def test_build_with_missing_weights_says_what_was_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["build", "--task", "vision", "--annotators", "canny,openpose", "-n", "3",
                                      "-q", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("note: skipped annotators without weights: openpose (missing body_pose_model.pth)")
    assert "vision/canny: 3 rows" in result.output
    result = CliRunner().invoke(app, ["build", "--task", "vision", "--annotators", "openpose", "-n", "3", "-q",
                                      "-o", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "body_pose_model.pth" in result.output and "Traceback" not in result.output
