"""The trainer: it learns, resumes exactly, stops on NaN keeping the last good checkpoint, weights the edit loss on
changed pixels only, and LoRA adapters save, load and merge consistently."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from x2i.core.imageio import decode  # noqa: E402
from x2i.model.training.buckets import mask_to_latent  # noqa: E402
from x2i.model.training.config import load_train_config  # noqa: E402
from x2i.model.training.loop import Trainer, TrainingStopped  # noqa: E402
from x2i.engine.shards import iter_rows, shard_files  # noqa: E402

from train_helpers import write_mix  # noqa: E402


@pytest.fixture(scope="module")
def mix_path(datasets, tmp_path_factory):
    return write_mix(tmp_path_factory.mktemp("mix") / "m.yaml",
                     [{"path": str(datasets["a"]), "ratio": 3}, {"path": str(datasets["b"])}])


def config(run_dir, mix_path, **over):
    base = {"mix": str(mix_path), "run_dir": str(run_dir), "steps": 4, "save_every": 2, "log_every": 1,
            "progress": False, "tensorboard": False,
            "loader": {"batch_size": 4, "max_pixels": 32 * 32, "max_input_side": 32, "num_workers": 0},
            "optim": {"lr": 2e-3, "warmup_steps": 1}}
    for key, value in over.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return load_train_config(base=base)


def eval_loss(trainer, batches, seed=123):
    """Mean loss on fixed batches with fixed times and noise."""
    trainer.generator.manual_seed(seed)
    with torch.no_grad():
        return float(np.mean([trainer.forward_loss(b)[0].item() for b in batches]))


def test_a_few_steps_lower_the_loss(tmp_path, mix_path):
    trainer = Trainer(config(tmp_path / "run", mix_path, steps=40, save_every=1000,
                             loader={"dropout": {"both": 0.0, "text": 0.0}}))
    it = iter(trainer.dataset)
    held = [next(it) for _ in range(4)]
    before = eval_loss(trainer, held)
    trainer.train()
    after = eval_loss(trainer, held)
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in log)
    assert set(log[-1]["mix"]) == {"a:text_to_image", "a:image_edit", "b:subject_driven"}


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, mix_path):
    over = dict(ema={"decay": 0.9}, loader={"num_workers": 2, "prefetch_factor": 2,
                                             "dropout": {"both": 0.2, "text": 0.2, "images": 0.1}})
    Trainer(config(tmp_path / "a", mix_path, steps=5, **over)).train()
    Trainer(config(tmp_path / "b", mix_path, steps=3, **over)).train()  # checkpoint at step 2 and 3
    with pytest.raises(Exception, match="--resume"):
        Trainer(config(tmp_path / "b", mix_path, steps=5, **over))
    with pytest.raises(Exception, match="different configuration.*optim.lr"):
        Trainer(config(tmp_path / "b", mix_path, steps=5, optim={"lr": 1e-3}, **over), resume=True)
    first = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000003" / "model.safetensors"))
    resumed = Trainer(config(tmp_path / "b", mix_path, steps=5, **over), resume=True)
    assert resumed.step == 3
    resumed.train()
    for folder in ("final", "final-ema"):
        a = load_file(str(tmp_path / "a" / folder / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / folder / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert any(not torch.equal(first[k], b[k]) for k in first)  # it did train after resuming


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, mix_path, monkeypatch):
    trainer = Trainer(config(tmp_path / "run", mix_path, steps=6, save_every=2))
    real = Trainer.forward_loss

    def poisoned(self, batch):
        loss, tokens = real(self, batch)
        return (loss * float("nan") if self.step >= 3 else loss), tokens

    monkeypatch.setattr(Trainer, "forward_loss", poisoned)
    with pytest.raises(TrainingStopped, match=r"non-finite loss .* at step 4.*last good checkpoint: .*step-0000002"):
        trainer.train()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == ["step-0000002"] and not (tmp_path / "run" / "final").exists()


def test_edit_loss_weighs_only_changed_pixels(tmp_path, mix_path, datasets):
    trainer = Trainer(config(tmp_path / "run", mix_path, edit_loss_weight=7.0,
                             loader={"dropout": {"both": 0.0, "text": 0.0}}))
    rows = {r["id"]: r for p in shard_files(datasets["a"]) for r in iter_rows(p)}
    it = iter(trainer.dataset)
    seen = 0
    for _ in range(8):
        batch = next(it)
        weights = trainer.loss_weights(batch, torch.zeros(len(batch), 12, 16, 16))
        for rid, task, w in zip(batch.ids, batch.tasks, weights):
            if task != "image_edit":
                assert torch.equal(w, torch.ones(1, 16, 16))
                continue
            r = rows[rid]
            before = np.asarray(decode(r["input_images"][0]["bytes"]), np.int16)
            after = np.asarray(decode(r["output_image"]["bytes"]), np.int16)
            changed = torch.from_numpy(mask_to_latent(np.abs(before - after).max(axis=2) > 0, (32, 32), 2)) > 0
            assert torch.all(w[0][changed] == 7.0) and torch.all(w[0][~changed] == 1.0)
            seen += 1
    assert seen >= 3

    # In the loss: the same error costs 7x more on a changed pixel than on an unchanged one.
    from x2i.model.training.loss import flow_matching_loss

    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    w = 1 + 6 * mask
    x1, noise, t = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.full((1,), 0.5)

    def err_at(i, j):
        def model(cond, x, t):
            out = torch.zeros_like(x)
            out[..., i, j] = 1.0
            return out
        return flow_matching_loss(model, None, x1, t=t, noise=noise, loss_mask=w).item()

    assert err_at(0, 0) == pytest.approx(7 * err_at(2, 3))


def test_lora_adapter_save_load_merge_round_trip(tmp_path, mix_path):
    from x2i.model.modeling.checkpoint import load_model
    from x2i.model.training.lora import load_adapter
    from x2i.model.modeling.transformer import Condition
    from x2i.model.testing.tiny import make_tiny_checkpoint

    init = make_tiny_checkpoint(tmp_path / "init", seed=3)
    trainer = Trainer(config(tmp_path / "run", mix_path, steps=3, lora={"rank": 4},
                             model={"init": str(init)}, optim={"lr": 5e-2}))
    trainable = [n for n, _ in trainer.named]
    assert trainable and all("lora_" in n and ("qkv_proj" in n or "o_proj" in n) for n in trainable)
    trainer.train()
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file() and (final / "vae").is_dir()

    base, merged = load_model(init), load_model(final)
    with_adapter = load_adapter(load_model(init), final / "adapter").eval()
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed and all(k.endswith(("qkv_proj.weight", "o_proj.weight")) for k in changed)

    torch.manual_seed(0)
    cond = Condition(input_ids=torch.randint(0, 300, (2, 9)), valid=torch.ones(2, 9, dtype=torch.bool),
                     image_spans=[])
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        out_base, out_merged, out_adapter = base(cond, x, t), merged(cond, x, t), with_adapter(cond, x, t)
    torch.testing.assert_close(out_adapter, out_merged, rtol=1e-5, atol=1e-5)
    assert (out_merged - out_base).abs().max() > 1e-4


def test_precomputed_latent_cache_is_used_and_changes_nothing(tmp_path, mix_path):
    over = dict(loader={"latent_cache": str(tmp_path / "cache")}, steps=3)
    cached = Trainer(config(tmp_path / "cached", mix_path, **over))
    assert cached.precompute_latents() >= 130
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) > 100
    batch = next(iter(cached.dataset))
    assert all(x is not None for x in batch.out_latents) and all(p is None for p in batch.out_pixels)
    cached.train()
    Trainer(config(tmp_path / "plain", mix_path, steps=3)).train()
    a = load_file(str(tmp_path / "cached" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the cache holds exactly what the codec computes
