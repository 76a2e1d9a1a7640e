"""`x2i train` end to end on datasets built by `x2i build`, its bad-input handling, and multi-process training
(DDP and FSDP over gloo on CPU, launched with torchrun)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from x2i.cli.main import app  # noqa: E402

from train_helpers import write_mix  # noqa: E402

TRAIN_SETS = ["--set", "loader.max_pixels=1024", "--set", "loader.max_input_side=32", "--set", "save_every=2",
              "--set", "log_every=1", "--set", "tensorboard=false", "--set", "codec.pixel_factor=2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The shapes-world training sets, built by x2i's own builders (small)."""
    base = tmp_path_factory.mktemp("built")
    runner = CliRunner()
    for task, scenes in (("shapes-text-to-image", 160), ("shapes-image-edit", 40)):
        result = runner.invoke(app, ["build", "--task", task, "--out", str(base / task), "-q",
                                     "--set", f"source.options.embedded.scenes={scenes}"])
        assert result.exit_code == 0, result.output
    return write_mix(base / "mix.yaml", [{"path": str(base / "shapes-text-to-image"), "ratio": 0.8},
                                         {"path": str(base / "shapes-image-edit"), "ratio": 0.2}])


def test_x2i_train_runs_and_records_its_config(built, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--mix", str(built), "--model", "tiny", "--steps", "3", "--batch-size", "4", "--workers", "0",
            "--out", str(run), "-q", *TRAIN_SETS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "shapes-text-to-image:text_to_image" in result.output and "->" in result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["steps"] == 3 and config["model"]["preset"] == "tiny" and config["loader"]["max_pixels"] == 1024
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    assert (run / "final" / "vae" / "pixel_codec.json").is_file()
    # The exported folder is an ordinary checkpoint: the model's own pipeline loads it and generates.
    from x2i.model.inference.pipeline import OmniGenPipeline

    pipe = OmniGenPipeline.from_pretrained(run / "final", device="cpu")
    image = pipe("A small red circle on a plain background.", height=32, width=32, steps=2, seed=0)[0]
    assert image.size == (32, 32)
    # The same command again would overwrite a run: refused, one line, exit 2.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output and len(again.output.strip().splitlines()) == 1
    resumed = CliRunner().invoke(app, [*args[:6], "5", *args[7:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at step 3" in resumed.output


@pytest.fixture(scope="module")
def finished_run(built, tmp_path_factory):
    """A finished 2-step run at 32 px (max_pixels 1024) and the arguments that made it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    args = ["train", "--mix", str(built), "--model", "tiny", "--steps", "2", "--batch-size", "4", "--workers", "0",
            "--out", str(run), "-q", *TRAIN_SETS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run, args


def test_resume_with_no_steps_left_says_training_is_complete(finished_run):
    run, args = finished_run
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "training is already complete: step 2 of 2" in result.output
    assert f"last recorded loss {last['loss']:.4f}" in result.output and "nan" not in result.output
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # nothing was trained


def test_generate_defaults_to_the_size_the_model_was_trained_at(finished_run, tmp_path):
    run, _ = finished_run
    assert json.loads((run / "final" / "config.json").read_text())["default_image_size"] == [32, 32]
    out = tmp_path / "g.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(run / "final"), "--prompt",
                                      "A small red circle on a plain background.", "--steps", "2", "--seed", "0",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(32x32)" in result.output


def test_x2i_train_refuses_bad_input_before_training(built, tmp_path):
    missing = write_mix(tmp_path / "m.yaml", [{"path": str(tmp_path / "not-built")}])
    result = CliRunner().invoke(app, ["train", "--mix", str(missing), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not-built/manifest.json not found" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["train", "--mix", str(built), "--out", str(tmp_path / "run"),
                                      "--set", "optim.lrr=1"])
    assert result.exit_code == 2 and "unknown key" in result.output


def torchrun(strategy: str, mix, out, steps: int = 3) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "x2i.cli.main",
           "train", "--mix", str(mix), "--model", "tiny", "--steps", str(steps), "--batch-size", "4", "--workers",
           "0", "--strategy", strategy, "--out", str(out), "-q", "--lr", "1e-3", "--set", "optim.warmup_steps=1",
           "--set", "ema.decay=0.9", *TRAIN_SETS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ddp_and_fsdp_train_the_same_model_on_cpu(built, tmp_path):
    torchrun("ddp", built, tmp_path / "ddp")
    torchrun("fsdp", built, tmp_path / "fsdp")
    logs = {s: [json.loads(x) for x in (tmp_path / s / "log.jsonl").read_text().splitlines()] for s in ("ddp", "fsdp")}
    # Same data per rank, same initial weights and noise: the two strategies compute the same steps.
    assert logs["ddp"][0]["loss"] == pytest.approx(logs["fsdp"][0]["loss"], rel=1e-6)
    assert logs["ddp"][0]["mix"] == logs["fsdp"][0]["mix"]
    for folder in ("final", "final-ema"):
        a = load_file(str(tmp_path / "ddp" / folder / "model.safetensors"))
        b = load_file(str(tmp_path / "fsdp" / folder / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    state = json.loads(next((tmp_path / "fsdp" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["world_size"] == 2 and set(state["loader"]) == {"0", "1"}
