"""Checkpoints: our layout round-trips; missing files, pickles and foreign keys are reported, not ignored; the
model is found in a local directory, $X2I_OMNIGEN_DIR or the Hugging Face cache."""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from x2i.core.errors import X2IError  # noqa: E402
from x2i.model.modeling.checkpoint import (ENV_VAR, from_diffusers_state_dict, load_model,  # noqa: E402
                                           resolve_model_dir, save_model, to_diffusers_state_dict)
from x2i.model.modeling.config import FORMAT_MARKER  # noqa: E402


def _outputs(model, processor):
    cond = processor(["a red circle"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(cond, torch.randn(1, 4, 4, 4, generator=g), torch.tensor([0.3]))


def test_our_layout_round_trips(tiny_model, processor, tmp_path):
    save_model(tiny_model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format"] == FORMAT_MARKER
    loaded = load_model(tmp_path)
    assert loaded.config == tiny_model.config
    torch.testing.assert_close(_outputs(loaded, processor), _outputs(tiny_model, processor), atol=0, rtol=0)


def test_load_in_bf16(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())


def test_diffusers_key_conversion_round_trips(tiny_model):
    state = tiny_model.state_dict()
    back = from_diffusers_state_dict(to_diffusers_state_dict(state, tiny_model.config))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_missing_weight_file_is_named(tiny_dir, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, root)
    (root / "model.safetensors").unlink()
    with pytest.raises(X2IError, match=r"model\.safetensors .*not found in .*ckpt"):
        load_model(root)
    torch.save({}, root / "pytorch_model.bin")  # a pickle is never loaded, only pointed at
    with pytest.raises(X2IError, match="pickle"):
        load_model(root)


def test_missing_tokenizer_and_vae_files_are_named(tiny_dir, tmp_path):
    from x2i.model.inference.pipeline import OmniGenPipeline

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, root)
    (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(X2IError, match=r"diffusion_pytorch_model\.safetensors not found in .*vae"):
        OmniGenPipeline.from_pretrained(root, device="cpu")
    (root / "tokenizer.json").unlink()
    shutil.copytree(tiny_dir / "vae", root / "vae", dirs_exist_ok=True)
    with pytest.raises(X2IError, match=r"tokenizer\.json not found in .*ckpt"):
        OmniGenPipeline.from_pretrained(root, device="cpu")


def test_unexpected_and_missing_keys_are_listed(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["llm.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    del state["llm.norm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(X2IError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "unexpected keys: llm.layers.0.self_attn.rotary_emb.inv_freq" in message
    assert "missing keys: llm.norm.weight" in message


def test_sharded_weights_load(tiny_model, processor, tmp_path):
    save_model(tiny_model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(tmp_path / name))
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.testing.assert_close(_outputs(load_model(tmp_path), processor), _outputs(tiny_model, processor))


def test_resolution_order(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_model_dir(tiny_dir) == tiny_dir
    with pytest.raises(X2IError) as info:
        resolve_model_dir()
    assert f"${ENV_VAR} (unset)" in str(info.value)
    assert "Shitao/OmniGen-v1" in str(info.value) and str(tmp_path / "hf") in str(info.value)
    monkeypatch.setenv(ENV_VAR, str(tiny_dir))
    assert resolve_model_dir() == tiny_dir
    with pytest.raises(X2IError, match="local directory .*nowhere"):
        resolve_model_dir(tmp_path / "nowhere")


def test_found_in_hugging_face_cache(tiny_dir, tmp_path, monkeypatch):
    """A snapshot laid out as huggingface_hub caches it is found offline by repo id."""
    cache = tmp_path / "hf"
    repo = cache / "models--someone--tiny-omnigen"
    commit = "0" * 40
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = resolve_model_dir("someone/tiny-omnigen")
    assert found.resolve() == (repo / "snapshots" / commit).resolve()
    assert load_model(found).config.hidden_size == 64


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(X2IError, match="no config.json"):
        load_model(tmp_path)


def test_rotary_frequencies_stay_fp32_when_the_model_is_cast(tiny_model):
    import copy

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    assert half.rope.inv_freq_long.dtype == torch.float32
    assert torch.equal(half.rope.inv_freq_long, tiny_model.rope.inv_freq_long)
    assert torch.equal(half.rope.inv_freq_short, tiny_model.rope.inv_freq_short)


def test_convert_diffusers_layout_to_ours(tiny_model, processor, tmp_path):
    from x2i.model.modeling.checkpoint import convert_checkpoint, detect_layout
    from x2i.model.inference.pipeline import OmniGenPipeline
    from x2i.model.testing.tiny import make_tiny_checkpoint

    source = make_tiny_checkpoint(tmp_path / "diffusers", layout="diffusers", model=tiny_model)
    converted = convert_checkpoint(source, tmp_path / "ours")
    assert detect_layout(converted).kind == "x2i"
    kwargs = dict(height=32, width=32, steps=2, seed=0, output_type="tensor")
    torch.testing.assert_close(OmniGenPipeline.from_pretrained(converted, device="cpu")("a cat", **kwargs),
                               OmniGenPipeline.from_pretrained(source, device="cpu")("a cat", **kwargs))
