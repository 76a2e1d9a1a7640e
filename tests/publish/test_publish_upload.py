"""`x2i publish` uploads through the real huggingface_hub client to a local fake Hub endpoint (tests/publish/fake_hub.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_hub import FakeHub
from x2i.cli.main import app

pytest.importorskip("huggingface_hub")

TOKEN = "hf_x2iTestSecretToken0123456789"


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def _publish(dataset, stage, hub, *extra):
    return CliRunner().invoke(app, ["publish", str(dataset), "--repo-id", "me/mixed", "--endpoint", hub.url,
                                    "--stage", str(stage), *extra])


def _staged_files(stage: Path) -> dict[str, bytes]:
    return {str(p.relative_to(stage)): p.read_bytes() for p in stage.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def _no_token_anywhere(result, stage: Path) -> None:
    assert TOKEN not in result.output
    for p in stage.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_upload_in_batched_commits_card_last(mixed_dataset, tmp_path, hub, token):
    result = _publish(mixed_dataset, tmp_path / "stage", hub, "--files-per-commit", "2", "--private")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{hub.url}/datasets/me/mixed")
    staged = _staged_files(tmp_path / "stage")
    assert hub.files("me/mixed") == staged  # every staged file, byte for byte, and nothing else
    assert hub.repos["me/mixed"].private is True
    commits = hub.commits("me/mixed")
    data_files = sorted(p for p in staged if p != "README.md")
    assert all(len(c["added"]) <= 2 for c in commits)
    assert [p for c in commits[:-1] for p in c["added"]] == data_files
    assert commits[-1]["added"] == ["README.md"]  # configs appear only once their files are there
    assert len(commits) == -(-len(data_files) // 2) + 1
    # the token went to the Hub on every request and nowhere else
    assert hub.requests and all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    _no_token_anywhere(result, tmp_path / "stage")
    # publishing again uploads nothing
    again = _publish(mixed_dataset, tmp_path / "stage", hub, "--files-per-commit", "2")
    assert again.exit_code == 0, again.output
    assert len(hub.commits("me/mixed")) == len(commits)
    assert f"{len(staged)} already there" in again.output


def test_interrupted_upload_resumes(mixed_dataset, tmp_path, hub, token):
    hub.fail_commit = 3
    first = _publish(mixed_dataset, tmp_path / "stage", hub, "--files-per-commit", "2")
    assert first.exit_code == 2
    assert "re-run the same command to resume" in first.output
    assert len(first.output.strip().splitlines()[-1]) > 0 and "Traceback" not in first.output
    done = [p for c in hub.commits("me/mixed") for p in c["added"]]
    assert len(done) == 4 and "README.md" not in done  # two batches landed, then the failure; no card yet
    _no_token_anywhere(first, tmp_path / "stage")
    second = _publish(mixed_dataset, tmp_path / "stage", hub, "--files-per-commit", "2")
    assert second.exit_code == 0, second.output
    assert "4 file(s) already on the Hub with the same content: skipped" in second.output
    resumed = [p for c in hub.commits("me/mixed")[2:] for p in c["added"]]
    assert not set(resumed) & set(done)  # what was committed before is not sent again
    assert hub.files("me/mixed") == _staged_files(tmp_path / "stage")


def test_branch_and_stale_files(mixed_dataset, tmp_path, hub, token):
    first = _publish(mixed_dataset, tmp_path / "stage", hub, "--revision", "v1")
    assert first.exit_code == 0, first.output
    assert "main" in hub.repos["me/mixed"].branches and hub.files("me/mixed", "main") == {}
    assert {c["branch"] for c in hub.commits("me/mixed")} == {"v1"}
    # A later publish with fewer tasks: the old task's files must go (the configs' globs would still match them)
    hub.files("me/mixed", "v1")["data/text_to_image/train-00007-of-00009.parquet"] = b"old"
    hub.files("me/mixed", "v1")["notes/keep.txt"] = b"not ours"
    second = _publish(mixed_dataset, tmp_path / "stage", hub, "--revision", "v1")
    assert second.exit_code == 0, second.output
    files = hub.files("me/mixed", "v1")
    assert "data/text_to_image/train-00007-of-00009.parquet" not in files
    assert files["notes/keep.txt"] == b"not ours"  # only data/ is ours to clean
    assert hub.commits("me/mixed")[-1]["deleted"] == ["data/text_to_image/train-00007-of-00009.parquet"]


def test_no_token_means_nothing_uploaded(mixed_dataset, tmp_path, hub):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), X2I_CACHE=str(tmp_path / "cache"))  # no token file there
    proc = subprocess.run([sys.executable, "-m", "x2i.cli.main", "publish", str(mixed_dataset), "--repo-id",
                           "me/mixed", "--endpoint", hub.url, "--stage", str(tmp_path / "stage")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no Hugging Face token found" in proc.stderr and "nothing was uploaded" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert hub.requests == [] and not (tmp_path / "stage").exists()


def test_dry_run_needs_no_token_and_contacts_nobody(mixed_dataset, tmp_path, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    result = _publish(mixed_dataset, tmp_path / "stage", hub, "--dry-run")
    assert result.exit_code == 0, result.output
    assert hub.requests == []
