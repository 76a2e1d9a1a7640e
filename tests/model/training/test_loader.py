"""The mix loader: ratios, determinism, rank/worker sharding, exact resume, buckets, bad rows, condition dropout,
change masks on the latent grid and the latent cache."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402

from x2i.core.config import from_dict  # noqa: E402
from x2i.core.imageio import EncodedImage, decode  # noqa: E402
from x2i.model.inference.processor import Processor  # noqa: E402
from x2i.model.inference.tokenizer import build_tiny_tokenizer  # noqa: E402
from x2i.model.training.buckets import choose_bucket, decode_change_mask, make_buckets, mask_to_latent  # noqa: E402
from x2i.model.training.loader import Geometry, LatentCache, LoaderConfig, MixLoader, make_dataloader  # noqa: E402
from x2i.model.training.mix import load_mix  # noqa: E402
from x2i.engine.shards import PartitionWriter, iter_rows, shard_files  # noqa: E402

from train_helpers import shapes_sample, write_dataset, write_manifest, write_mix  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def make_loader(mix, tokenizer, rank=0, world=1, **config):
    config = {"batch_size": 4, "max_pixels": 32 * 32, "max_input_side": 32, "num_workers": 0, **config}
    return MixLoader(mix, from_dict(LoaderConfig, config), Processor(tokenizer), Geometry(2, 2, "pixel-test"), rank,
                     world)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def mix_ab(datasets, tmp_path_factory):
    path = tmp_path_factory.mktemp("mix") / "m.yaml"
    return load_mix(write_mix(path, [{"path": str(datasets["a"]), "ratio": 3}, {"path": str(datasets["b"])}]))


def test_ratios_honoured_and_deterministic(mix_ab, tokenizer):
    batches = take(make_loader(mix_ab, tokenizer), 150)
    counts = collections.Counter(s for b in batches for s in b.streams)
    total = sum(counts.values())
    assert total == 600
    for name, target in mix_ab.target_ratios().items():
        assert abs(counts[name] / total - target) < 0.05, (name, counts[name] / total, target)
    again = take(make_loader(mix_ab, tokenizer), 150)
    assert [b.ids for b in again] == [b.ids for b in batches]
    assert all(torch.equal(x, y) for a, b in zip(batches[:5], again[:5]) for x, y in zip(a.out_pixels, b.out_pixels))


def test_ranks_and_workers_read_disjoint_units(datasets, tokenizer, tmp_path):
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["b"])}]))  # 40 rows in 4 row groups
    seen = []
    for rank in range(2):
        loader = make_loader(mix, tokenizer, rank=rank, world=2, batch_size=5, dropout={"both": 0, "text": 0})
        ids = [i for b in take(loader, 4) for i in b.ids]  # one epoch's share: 2 units of 10 rows
        assert len(set(ids)) == 20
        seen.append(set(ids))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40
    # Workers split a rank's share the same way: 2 ranks x 2 workers = 4 consumers, one row group each per pass.
    per_consumer = []
    for rank in range(2):
        loader = make_loader(mix, tokenizer, rank=rank, world=2, batch_size=5, num_workers=2)
        for w in range(2):
            sampler = loader.sampler(w)
            per_consumer.append({row["id"] for _ in range(2) for _, _, row, _ in sampler.next_batch()[0]})
    assert [len(s) for s in per_consumer] == [10, 10, 10, 10]
    assert len(set().union(*per_consumer)) == 40


def test_resume_continues_exactly_with_rows_waiting_in_buckets(tmp_path, tokenizer):
    # Two output shapes -> two buckets, so rows wait in bucket buffers between batches.
    d = write_dataset(tmp_path / "d", {"text_to_image": 40, "image_edit": 20}, sizes={"text_to_image": (48, 32)})
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(d)}]))
    loader = make_loader(mix, tokenizer, max_pixels=48 * 48)
    batches = take(loader, 14)
    assert len({tuple(b.out_pixels[0].shape) for b in batches}) == 2
    cut = next(i for i, b in enumerate(batches) if b.state["pending"] and i >= 5)
    resumed = make_loader(mix, tokenizer, max_pixels=48 * 48)
    resumed.load_state({0: batches[cut].state})
    rest = take(resumed, len(batches) - cut - 1)
    assert [b.ids for b in rest] == [b.ids for b in batches[cut + 1:]]
    assert [b.instructions for b in rest] == [b.instructions for b in batches[cut + 1:]]
    # A position from another mix is refused.
    other = make_loader(mix, tokenizer, max_pixels=48 * 48, batch_size=3)
    with pytest.raises(Exception, match="different mix or loader geometry"):
        other.load_state({0: batches[cut].state})
        next(iter(other))


def test_dataloader_workers_are_deterministic(mix_ab, tokenizer):
    def ids(n):
        loader = make_dataloader(make_loader(mix_ab, tokenizer, num_workers=2, prefetch_factor=2))
        it = iter(loader)
        return [(b.consumer, tuple(b.ids)) for b in (next(it) for _ in range(n))]

    first = ids(6)
    assert [c for c, _ in first] == [0, 1, 0, 1, 0, 1]
    assert first == ids(6)


def test_buckets():
    buckets = make_buckets(64 * 64, 16)
    assert (64, 64) in buckets
    assert all(h % 16 == 0 and w % 16 == 0 and h * w <= 64 * 64 and max(h / w, w / h) <= 4 for h, w in buckets)
    assert choose_bucket(buckets, 48, 32) == (48, 80)  # width 48, height 32: the nearest aspect ratio is 80/48
    assert choose_bucket(buckets, 500, 500) == (64, 64)


def test_batches_have_one_size_and_no_padding(tmp_path, tokenizer):
    d = write_dataset(tmp_path / "d", {"text_to_image": 24}, sizes={"text_to_image": (48, 32)})
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(d)}, {"path": str(write_dataset(
        tmp_path / "e", {"text_to_image": 24}))}]))
    loader = make_loader(mix, tokenizer, max_pixels=48 * 48)
    expected = {(3, *choose_bucket(loader.buckets, 48, 32)), (3, 48, 48)}
    seen = set()
    for b in take(loader, 10):
        shapes = {tuple(x.shape) for x in b.out_pixels}
        assert len(shapes) == 1
        seen |= shapes
    assert seen == expected


def test_bad_rows_are_skipped_and_counted(tmp_path, tokenizer):
    writer = PartitionWriter(tmp_path / "bad", 0, rows_per_group=10)
    for i in range(30):
        s = shapes_sample("text_to_image", i, 32)
        if i % 5 == 0:
            s.output_image = EncodedImage(b"\x89PNG not really", 32, 32, "PNG")
        if i % 7 == 1:
            s.instruction = "An unclosed <img> placeholder"
        writer.write(s)
    shards = [vars(x) for x in writer.commit()]
    write_manifest(tmp_path / "bad", shards, "bad")
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(tmp_path / "bad")}]))
    batches = take(make_loader(mix, tokenizer), 20)
    skipped = batches[-1].state["skipped"]
    assert skipped.get("image_unreadable", 0) > 0 and skipped.get("bad_instruction", 0) > 0
    assert all(len(b) > 0 for b in batches)
    assert sum(len(b) for b in batches) + sum(skipped.values()) == batches[-1].state["draws"]


def test_condition_dropout(mix_ab, tokenizer):
    placeholder = "<img><|image_1|></img>"
    b = take(make_loader(mix_ab, tokenizer, dropout={"both": 1.0, "text": 0.0}), 3)
    assert all(t == "" for x in b for t in x.instructions) and not any(x.cond.image_spans for x in b)
    b = take(make_loader(mix_ab, tokenizer, dropout={"both": 0.0, "text": 1.0}), 5)
    for x in b:
        for task, text in zip(x.tasks, x.instructions):
            assert text == ("" if task == "text_to_image" else placeholder)
    b = take(make_loader(mix_ab, tokenizer, dropout={"both": 0.0, "text": 0.0, "images": 1.0}), 5)
    assert not any(x.cond.image_spans for x in b) and not any("<img>" in t for x in b for t in x.instructions)
    assert any(t for x in b for t in x.instructions)
    b = take(make_loader(mix_ab, tokenizer, dropout={"both": 0.3, "text": 0.0}), 100)
    empty = sum(t == "" for x in b for t in x.instructions) / 400
    assert 0.24 < empty < 0.36


def test_edit_masks_follow_the_change_on_the_latent_grid(datasets, tokenizer, tmp_path):
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"])}]))
    rows = {r["id"]: r for p in shard_files(datasets["a"]) for r in iter_rows(p)}
    batches = take(make_loader(mix, tokenizer, dropout={"both": 0.0, "text": 0.0}), 10)
    checked = 0
    for b in batches:
        for rid, task, mask in zip(b.ids, b.tasks, b.masks):
            if task != "image_edit":
                assert mask is None
                continue
            row = rows[rid]
            before = np.asarray(decode(row["input_images"][0]["bytes"]), np.int16)
            after = np.asarray(decode(row["output_image"]["bytes"]), np.int16)
            changed = np.abs(before - after).max(axis=2) > 0
            expected = mask_to_latent(changed, (32, 32), 2)
            assert torch.equal(mask[0], torch.from_numpy(expected))
            assert 0 < expected.mean() < 0.5
            np.testing.assert_array_equal(decode_change_mask(json.loads(row["meta"])["change_mask"]), changed)
            checked += 1
    assert checked >= 5


def test_latent_cache_replaces_decoding(mix_ab, tokenizer, tmp_path):
    loader = make_loader(mix_ab, tokenizer, latent_cache=str(tmp_path / "cache"))
    first = take(loader, 4)
    assert all(x is None for b in first for x in b.out_latents)
    cache = LatentCache(tmp_path / "cache", "pixel-test")
    for b in first:  # what the trainer does after encoding
        for key, pixels in zip(b.out_keys, b.out_pixels):
            cache.put(key, pixels[:, ::2, ::2] * 2)
        for key, pixels in zip(b.in_keys, b.cond.pixels):
            cache.put(key, pixels[:, ::2, ::2] * 2)
    again = take(make_loader(mix_ab, tokenizer, latent_cache=str(tmp_path / "cache")), 4)
    for a, b in zip(first, again):
        assert a.ids == b.ids
        assert all(p is None for p in b.out_pixels)
        assert all(torch.equal(lat, px[:, ::2, ::2] * 2) for lat, px in zip(b.out_latents, a.out_pixels))
        assert all(lat is not None for lat in b.in_latents)
        assert torch.equal(a.cond.input_ids, b.cond.input_ids)  # same tokens, no pixels decoded
