"""The training loader: batches straight from the Parquet shards a mix names, deterministic and resumable.

Who reads what (sampler.py). The loader runs as `K = world_size x num_workers` independent *consumers* (one per rank and
DataLoader worker). Every stream (see mix.py) is an endless sequence of row-group units: epoch e is a seeded
permutation of all the stream's row groups; consumer c takes the units at positions c, c + K, c + 2K, ... of
that sequence, so consumers never read the same unit in one pass and no bytes are read only to be skipped.
Rows inside a unit are read in a seeded shuffled order.

What a consumer does. Draw i picks a stream with the mix's probabilities (a counter-based generator seeded by
(seed, consumer, i)), takes that stream's next row, and files it under its resolution bucket (buckets.py);
a bucket that reaches `batch_size` rows becomes a batch. Images are decoded, fitted, tokenized (the model's
Processor) and condition-dropped only then, in the worker. A row that fails (undecodable image, bad
placeholders, a condition over `max_condition_tokens`) is skipped and counted by reason; the batch is just
smaller.

Position. A consumer's whole position is a small JSON dict (draw counter, per-stream cursor, the rows waiting in
bucket buffers as references): every batch carries the position after it, the trainer keeps the position of the
last batch it consumed per consumer, and a resumed loader continues exactly there (buffered rows are re-read).

Latents. With `latent_cache`, an image whose latents were computed before (by the trainer's codec; the cache
folder is per codec fingerprint, file names are content hashes of the image bytes plus its target size) is
loaded as latents and never decoded; the trainer encodes the rest on its device and writes them to the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from x2i.core import prompt as prompt_format
from x2i.core.errors import X2IError
from x2i.core.imageio import ImageError, decode

from ..inference.processor import Processor, fit_image, to_tensor
from ..modeling.transformer import Condition
from .buckets import decode_change_mask, fit_to_bucket, make_buckets, mask_to_latent
from .mix import Mix
from .sampler import MixSampler



@dataclass
class DropoutConfig:
    """Condition dropout for classifier-free guidance; the three cases are exclusive (drawn from one number)."""

    both: float = 0.1  # instruction and images dropped: the unconditional branch (an empty instruction)
    text: float = 0.05  # instruction dropped, images kept (placeholders joined by spaces): the images-only branch
    images: float = 0.0  # images dropped, text kept (placeholders removed)


@dataclass
class LoaderConfig:
    batch_size: int = 8  # rows per batch, per rank
    max_pixels: int = 512 * 512  # output pixel budget: the buckets' area
    max_aspect: float = 4.0
    buckets: list[list[int]] | None = None  # explicit [[height, width], ...]; None: made from max_pixels
    max_input_side: int = 512  # input (condition) images: OmniGen's policy, longer side at most this
    max_input_images: int = 8
    max_condition_tokens: int = 8192  # longer conditions (text + input image tokens) are skipped and counted
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    num_workers: int = 2  # DataLoader worker processes per rank (0: in the training process)
    prefetch_factor: int = 4
    latent_cache: str | None = None  # folder for precomputed latents (None: encode every time)


@dataclass
class Batch:
    """One training batch (one bucket). Per sample: output pixels or cached output latents; input images as
    pixels or cached latents, in the condition's image order; the latent-grid loss mask of image_edit rows."""

    ids: list[str]
    tasks: list[str]
    streams: list[str]
    instructions: list[str]
    cond: Condition  # token ids, padding mask, image spans (pixels of inputs without cached latents)
    out_pixels: list[torch.Tensor | None]
    out_latents: list[torch.Tensor | None]
    out_keys: list[str | None]
    in_latents: list[torch.Tensor | None]
    in_keys: list[str | None]
    masks: list[torch.Tensor | None]
    consumer: int
    state: dict[str, Any]  # the consumer's position after this batch

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> "Batch":
        pin = lambda x: x.pin_memory() if isinstance(x, torch.Tensor) else x  # noqa: E731
        cond = dataclasses.replace(self.cond, input_ids=pin(self.cond.input_ids), valid=pin(self.cond.valid),
                                   pixels=[pin(p) for p in self.cond.pixels])
        return dataclasses.replace(self, cond=cond, out_pixels=[pin(x) for x in self.out_pixels],
                                   out_latents=[pin(x) for x in self.out_latents],
                                   in_latents=[pin(x) for x in self.in_latents], masks=[pin(x) for x in self.masks])


class SkipRow(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _content_key(data: bytes, suffix: str) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest() + suffix


class LatentCache:
    """Latents as float32 .npy files (no pickle), one per image and target size, written atomically."""

    def __init__(self, root: str | Path, codec_fingerprint: str):
        self.root = Path(root) / codec_fingerprint

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed (and rewritten)

    def put(self, key: str, latent: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "wb") as f:
            np.save(f, latent.detach().float().cpu().numpy(), allow_pickle=False)
        os.replace(tmp, path)


@dataclass
class Geometry:
    """What the loader needs to know about the model and codec."""

    downsample: int  # image pixels per latent pixel (codec)
    patch_size: int  # latent pixels per token side (model)
    codec_fingerprint: str = "codec"

    @property
    def multiple(self) -> int:
        return self.downsample * self.patch_size


class MixLoader(torch.utils.data.IterableDataset):
    """An endless stream of `Batch`es for one rank; DataLoader workers split it further (see the module doc)."""

    def __init__(self, mix: Mix, config: LoaderConfig, processor: Processor, geometry: Geometry,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.mix, self.config, self.geometry = mix, config, geometry
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, config.num_workers)
        self.processor = processor
        self.processor.max_input_image_size = config.max_input_side
        self.processor.max_input_images = config.max_input_images
        self.processor.multiple = geometry.multiple
        m = geometry.multiple
        if config.buckets:
            self.buckets = [(int(h), int(w)) for h, w in config.buckets]
            bad = [b for b in self.buckets if b[0] % m or b[1] % m or b[0] <= 0 or b[1] <= 0]
            if bad:
                raise X2IError(f"buckets {bad} are not positive multiples of {m} (codec x patch)")
        else:
            self.buckets = make_buckets(config.max_pixels, m, config.max_aspect)
        self.seed = mix.config.seed
        self.fingerprint = hashlib.sha256(json.dumps(
            [mix.fingerprint(), self.buckets, config.batch_size, self.seed]).encode()).hexdigest()[:16]
        self.states: dict[int, dict[str, Any]] = {}  # consumer -> position to resume from
        self.offset = 0  # which worker plays consumer 0 (keeps the round-robin order across a resume)

    @property
    def consumers(self) -> int:
        return self.world_size * self.workers

    def load_state(self, states: dict[int, dict[str, Any]], batches_consumed: int = 0) -> None:
        """Resume from the positions of the last consumed batch of each consumer. DataLoader hands out batches
        from its workers in turn starting at worker 0, so worker w plays consumer (w + offset) mod workers."""
        self.states = {int(k): v for k, v in states.items()}
        self.offset = batches_consumed % self.workers

    def sampler(self, worker: int) -> MixSampler:
        local = (worker + self.offset) % self.workers
        consumer = self.rank * self.workers + local
        sampler = MixSampler(self.mix, consumer, self.consumers, self.seed, self.config.batch_size, self.buckets,
                             self.fingerprint)
        if consumer in self.states:
            sampler.load_state(self.states[consumer])
        return sampler

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"MixLoader made for {self.workers} workers runs under {info.num_workers}")
        sampler = self.sampler(worker)
        cache = LatentCache(self.config.latent_cache, self.geometry.codec_fingerprint) if self.config.latent_cache else None
        while True:
            rows, state = sampler.next_batch()
            batch = self.collate(rows, sampler, state, cache)
            if batch is not None:
                yield batch

    # -- one row -> one example ---------------------------------------------------------------------------------
    def _dropout(self, stream: int, position: int, r: int) -> str:
        """Which condition to drop for row r of the unit at global position `position` of a stream: a function of
        the data position only, so it does not change with the number of ranks or workers."""
        d = self.config.dropout
        u = np.random.default_rng([self.seed, 14, stream, position, r]).random()
        if u < d.both:
            return "both"
        if u < d.both + d.text:
            return "text"
        if u < d.both + d.text + d.images:
            return "images"
        return "none"

    def example(self, ref: list[int], position: int, row: dict, bucket: tuple[int, int],
                cache: LatentCache | None) -> dict:
        out = row.get("output_image") or {}
        data = out.get("bytes")
        if not data:
            raise SkipRow("output_image_missing")
        f = self.geometry.downsample
        out_key = _content_key(data, f".out.{bucket[0]}x{bucket[1]}")
        out_latent = cache.get(out_key) if cache else None
        out_pixels = None
        if out_latent is None:
            try:
                out_pixels = to_tensor(fit_to_bucket(decode(data), bucket))
            except ImageError as exc:  # decode turns anything PIL raises on damaged bytes into an ImageError
                raise SkipRow(getattr(exc, "reason", "output_image_undecodable")) from None
        instruction = row.get("instruction")
        inputs = [im.get("bytes") if im else None for im in (row.get("input_images") or [])]
        if not isinstance(instruction, str) or prompt_format.problems(instruction, len(inputs)):
            raise SkipRow("bad_instruction")
        if len(inputs) > self.config.max_input_images:
            raise SkipRow("too_many_input_images")
        mode = self._dropout(ref[0], position, ref[2])
        if mode in ("both", "images"):
            instruction = "" if mode == "both" else prompt_format.remove_placeholders(instruction)
            inputs = []
        elif mode == "text":
            instruction = " ".join(prompt_format.placeholder(k + 1) for k in range(len(inputs)))
        in_pixels, in_latents, in_keys = [], [], []
        m = self.geometry.multiple
        for k, raw in enumerate(inputs):
            if not raw:
                raise SkipRow("input_image_missing")
            key = _content_key(raw, f".in.{self.config.max_input_side}.{m}")
            latent = cache.get(key) if cache else None
            if latent is not None:
                # The processor counts an image's tokens from its pixel size: a zero-stride stand-in carries it.
                in_pixels.append(torch.zeros(()).expand(3, latent.shape[-2] * f, latent.shape[-1] * f))
            else:
                try:
                    in_pixels.append(to_tensor(fit_image(decode(raw), self.config.max_input_side, m)))
                except ImageError as exc:
                    raise SkipRow(getattr(exc, "reason", "input_image_undecodable")) from None
            in_latents.append(latent)
            in_keys.append(key)
        tokens = len(self.processor.tokenize(instruction, in_pixels)[0])
        if tokens > self.config.max_condition_tokens:
            raise SkipRow("condition_too_long")
        mask = None
        if row.get("task") == "image_edit":
            try:
                meta = json.loads(row.get("meta") or "{}")
                record = meta.get("change_mask")
                if record is not None:
                    mask = torch.from_numpy(mask_to_latent(decode_change_mask(record), bucket, f))[None]
            except (ValueError, KeyError, TypeError):
                raise SkipRow("change_mask_unreadable") from None
        return {"id": row.get("id") or "", "task": row.get("task") or "", "instruction": instruction,
                "out_pixels": out_pixels, "out_latent": out_latent, "out_key": out_key, "in_pixels": in_pixels,
                "in_latents": in_latents, "in_keys": in_keys, "mask": mask}

    def collate(self, rows, sampler: MixSampler, state: dict[str, Any], cache: LatentCache | None) -> Batch | None:
        examples, streams = [], []
        for ref, position, row, bucket in rows:
            try:
                examples.append(self.example(ref, position, row, bucket, cache))
                streams.append(self.mix.streams[ref[0]].name)
            except SkipRow as skip:
                sampler.skipped(skip.reason)
                state["skipped"][skip.reason] = state["skipped"].get(skip.reason, 0) + 1
        if not examples:
            return None
        cond = self.processor([e["instruction"] for e in examples], [e["in_pixels"] for e in examples])
        cached = [lat for e in examples for lat in e["in_latents"]]
        # Stand-ins for cached inputs are not pixels: drop them so nothing encodes them.
        cond.pixels = [p if lat is None else torch.empty(0) for p, lat in zip(cond.pixels, cached)]
        return Batch(ids=[e["id"] for e in examples], tasks=[e["task"] for e in examples], streams=streams,
                     instructions=[e["instruction"] for e in examples], cond=cond,
                     out_pixels=[e["out_pixels"] for e in examples], out_latents=[e["out_latent"] for e in examples],
                     out_keys=[e["out_key"] for e in examples], in_latents=cached,
                     in_keys=[k for e in examples for k in e["in_keys"]], masks=[e["mask"] for e in examples],
                     consumer=sampler.consumer, state=state)


def make_dataloader(dataset: MixLoader) -> torch.utils.data.DataLoader:
    """Batches are made inside the dataset (one bucket each), so the DataLoader only runs workers."""
    workers = dataset.config.num_workers
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers,
        prefetch_factor=dataset.config.prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available(), persistent_workers=False)
