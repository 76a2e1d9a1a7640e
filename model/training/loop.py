"""The rectified-flow trainer: OmniGen trained straight off a mix of x2i datasets.

Per optimizer step, on every rank: `grad_accum` batches from the mix loader; latents from the codec (or the latent
cache); t ~ sigmoid(N(0, 1)) (or `timesteps`), x_t = t x1 + (1 - t) noise, target x1 - noise; per-sample MSE, where the
changed latent pixels of image_edit rows weigh `edit_loss_weight` and the rest 1 (OmniGen meant to amplify edited
regions and left it as a TODO; our builders record the exact change mask); AdamW on fp32 master weights with
linear warmup, gradient clipping, optional EMA; bf16 autocast on GPU. A non-finite loss or gradient stops the
run (on every rank at once) with the last good checkpoint left in place.

The run folder: config.yaml (resolved), mix.json (streams and target ratios), tokenizer/, log.jsonl, tb/
(TensorBoard), checkpoints/step-*/ (state.py), final/ (and final-ema/): the trained model as a checkpoint
folder (LoRA runs: adapter/ in peft's format, plus the merged model).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from x2i.core.errors import X2IError

from ..codecs.base import to_model_latents
from ..inference.processor import Processor
from ..inference.tokenizer import TextTokenizer
from ..modeling.checkpoint import detect_layout
from . import dist as xdist
from .buckets import choose_bucket
from .codec import build_codec
from .config import TrainConfig
from .export import export_model
from .loader import Batch, Geometry, MixLoader, make_dataloader
from .lora import add_lora, base_omnigen
from .loss import flow_matching_loss
from .mix import Mix, load_mix
from .setup import build_model, fit_pca_codec, lr_factor, prepare_run_dir
from .state import EMA, list_checkpoints, load_checkpoint, save_checkpoint


class TrainingStopped(X2IError):
    """Training cannot go on (non-finite loss or gradients); the message names the last good checkpoint."""


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, mix: Mix | None = None):
        self.c = config
        self.run_dir = Path(config.run_dir)
        self.info = xdist.init_distributed(config.dist.strategy, config.dist.backend, config.device)
        dev = self.info.device
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and dev.type == "cuda")
        self.mix = mix or load_mix(config.mix)  # every check of manifests and shards happens here, first
        self.tokenizer_dir = prepare_run_dir(config, self.mix, self.info, resume)

        init_layout = detect_layout(config.model.init) if config.model.init else None
        self.codec = build_codec(config.codec, init_layout, lambda: fit_pca_codec(config, self.mix, self.info))
        self.codec.to(dev)
        self.model_config, model = build_model(config, self.codec)
        tokenizer = TextTokenizer.from_dir(self.tokenizer_dir)
        if config.lora.rank > 0:
            for p in model.parameters():
                p.requires_grad_(False)
            model = add_lora(model, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.targets,
                             config.lora.extra_trainable)
        base_omnigen(model).set_gradient_checkpointing(config.model.gradient_checkpointing)
        model.to(dev).train()
        self.module = xdist.wrap(xdist.TrainModule(model), self.info, self.bf16)
        self.named = [(_fqn(n), p) for n, p in self.module.named_parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW([p for _, p in self.named], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.ema = EMA(self.named, config.ema.decay) if config.ema.decay > 0 else None
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.info.rank)

        geometry = Geometry(self.codec.downsample, self.model_config.patch_size, self.codec.fingerprint())
        processor = Processor(tokenizer, pad_token_id=self.model_config.pad_token_id)
        self.dataset = MixLoader(self.mix, config.loader, processor, geometry, self.info.rank, self.info.world_size)
        self.cache = None
        if config.loader.latent_cache:
            from .loader import LatentCache

            self.cache = LatentCache(config.loader.latent_cache, geometry.codec_fingerprint)
        self.step = 0
        self.loader_states: dict[int, dict[str, Any]] = {}
        self.stream_counts = {s.name: 0 for s in self.mix.streams}
        self.last_checkpoint: Path | None = None
        if resume:
            self._resume()

    # ---- setup ---------------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        path = list_checkpoints(self.run_dir)[-1]
        state = load_checkpoint(path, self.module, self.optimizer, self.ema, self.generator, self.info.rank,
                                trainable_only=self.c.lora.rank > 0)
        if state["world_size"] != self.info.world_size:
            raise X2IError(f"{path} was written by {state['world_size']} process(es); resume with as many")
        self.step = state["step"]
        self.stream_counts.update(state["stream_counts"][self.info.rank])
        self.loader_states = {int(k): v for k, v in state["loader"].items()}
        mine = {k: v for k, v in self.loader_states.items()
                if k // self.dataset.workers == self.info.rank}
        self.dataset.load_state(mine, batches_consumed=state["batches_per_rank"])
        self.last_checkpoint = path

    # ---- one step ------------------------------------------------------------------------------------------------
    def _latents(self, batch: Batch):
        dev, codec = self.info.device, self.codec

        with torch.no_grad():
            inputs = []
            for pixels, latent, key in zip(batch.cond.pixels, batch.in_latents, batch.in_keys):
                if latent is None:
                    latent = to_model_latents(codec, pixels[None].to(dev).float())[0]
                    if self.cache is not None:
                        self.cache.put(key, latent)
                inputs.append(latent.to(dev))
            todo = [i for i, lat in enumerate(batch.out_latents) if lat is None]
            outputs = list(batch.out_latents)
            if todo:
                encoded = to_model_latents(codec, torch.stack([batch.out_pixels[i] for i in todo]).to(dev).float())
                for i, latent in zip(todo, encoded):
                    outputs[i] = latent
                    if self.cache is not None:
                        self.cache.put(batch.out_keys[i], latent)
        x1 = torch.stack([x.to(dev) for x in outputs])
        cond = batch.cond.to(dev)
        cond = cond.with_latents(inputs) if cond.image_spans else cond
        return cond, x1

    def loss_weights(self, batch: Batch, x1: torch.Tensor) -> list[torch.Tensor]:
        """Per-sample latent-grid weights: edit_loss_weight on changed pixels of image_edit rows, else 1."""
        w = self.c.edit_loss_weight
        out = []
        for mask in batch.masks:
            ones = torch.ones((1, *x1.shape[-2:]), device=x1.device)
            out.append(ones if mask is None else ones + (w - 1.0) * mask.to(x1.device))
        return out

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        cond, x1 = self._latents(batch)
        weights = self.loss_weights(batch, x1)
        autocast = torch.autocast(self.info.device.type, dtype=torch.bfloat16) \
            if self.bf16 and self.info.strategy != "fsdp" else nullcontext()
        with autocast:
            losses = flow_matching_loss(self.module, cond, x1, loss_mask=weights, generator=self.generator,
                                        timesteps=dataclasses.asdict(self.c.timesteps))
        p2 = self.model_config.patch_size ** 2
        tokens = int(cond.valid.sum()) + len(batch) * (1 + x1.shape[-2] * x1.shape[-1] // p2)
        return losses.mean(), tokens

    def _stop(self, what: str) -> None:
        where = self.last_checkpoint or (list_checkpoints(self.run_dir) or [None])[-1]
        raise TrainingStopped(f"{what} at step {self.step + 1}: training stopped; last good checkpoint: "
                              f"{where if where else 'none (no checkpoint was saved yet)'}")

    def _sync_context(self, last: bool):
        if last or self.info.strategy == "none":
            return nullcontext()
        if self.info.strategy == "ddp":
            return self.module.no_sync()
        self.module.set_requires_gradient_sync(False)
        return nullcontext()

    # ---- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train up to `steps`; the summary: step, loss (of the last step), run_dir, mix (realized ratios) and
        already_complete (a resumed run with no steps left: nothing trained, loss is the last one logged)."""
        c, info = self.c, self.info
        if self.step >= c.steps:
            # Export again all the same: final/ then exists even when the finished run died before writing it.
            if c.export:
                self.export()
            return {"step": self.step, "loss": self.last_logged_loss(), "run_dir": str(self.run_dir),
                    "mix": self.realized_ratios(), "already_complete": True}
        writer = self._writer()
        log_path = self.run_dir / "log.jsonl"
        bar = None
        if c.progress and info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True)
        loader = iter(make_dataloader(self.dataset))
        window = {"loss": 0.0, "n": 0, "samples": 0, "tokens": 0, "wait": 0.0, "time": 0.0}
        last_loss = float("nan")
        try:
            while self.step < c.steps:
                t0 = time.perf_counter()
                factor = lr_factor(self.step, c)
                for group in self.optimizer.param_groups:
                    group["lr"] = c.optim.lr * factor
                loss_sum = 0.0
                for micro in range(c.optim.grad_accum):
                    tw = time.perf_counter()
                    batch = next(loader)
                    window["wait"] += time.perf_counter() - tw
                    self.loader_states[batch.consumer] = batch.state
                    for name in batch.streams:
                        self.stream_counts[name] += 1
                    last = micro == c.optim.grad_accum - 1
                    if info.strategy == "fsdp" and last:
                        self.module.set_requires_gradient_sync(True)
                    with self._sync_context(last):
                        loss, tokens = self.forward_loss(batch)
                        bad = xdist.all_reduce([0.0 if torch.isfinite(loss) else 1.0], info.device, "max")[0]
                        if bad:
                            self._stop(f"non-finite loss ({loss.item()})")
                        (loss / c.optim.grad_accum).backward()
                    loss_sum += loss.item() / c.optim.grad_accum
                    window["samples"] += len(batch)
                    window["tokens"] += tokens
                grads = [p.grad for _, p in self.named if p.grad is not None]
                if c.optim.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.named], c.optim.grad_clip)
                else:
                    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
                norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if not math.isfinite(norm):
                    self._stop(f"non-finite gradient norm ({norm})")
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema is not None and self.step % c.ema.every == 0:
                    params = [p for _, p in self.named]
                    (self.ema.reset if self.step <= c.ema.start_step else self.ema.update)(params)
                last_loss = loss_sum
                window["loss"] += loss_sum
                window["n"] += 1
                window["time"] += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum:.4f}", sps=f"{window['samples'] / max(window['time'], 1e-9):.1f}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self._log(window, factor, norm, log_path, writer)
                    window = dict.fromkeys(window, 0.0)
                if self.step % c.save_every == 0 or self.step == c.steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        if c.export:
            self.export()
        return {"step": self.step, "loss": last_loss, "run_dir": str(self.run_dir), "mix": self.realized_ratios(),
                "already_complete": False}

    def last_logged_loss(self) -> float:
        """The loss of the last record in log.jsonl (NaN when there is none)."""
        path = self.run_dir / "log.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        for line in reversed(lines):
            if line.strip():
                return float(json.loads(line)["loss"])
        return float("nan")

    def precompute_latents(self) -> int:
        """Fill the latent cache before training: as many batches as the mix has rows (per process, without
        condition dropout, so every input image is seen). Streams are still drawn by their weights, so rows of
        light streams may be left for the first epoch to cache. Returns the number of samples encoded."""
        import itertools

        from .loader import DropoutConfig

        if self.cache is None:
            raise X2IError("precomputing latents needs loader.latent_cache (a folder)")
        config = dataclasses.replace(self.c.loader, dropout=DropoutConfig(both=0.0, text=0.0, images=0.0))
        d = self.dataset
        dataset = MixLoader(self.mix, config, d.processor, d.geometry, self.info.rank, self.info.world_size)
        rows = sum(s.rows for s in self.mix.streams)
        batches = math.ceil(rows / (config.batch_size * self.info.world_size))
        done = 0
        for batch in itertools.islice(make_dataloader(dataset), batches):
            self._latents(batch)
            done += len(batch)
        return done

    def realized_ratios(self) -> dict[str, dict[str, float]]:
        names = list(self.stream_counts)
        counts = xdist.all_reduce([float(self.stream_counts[n]) for n in names], self.info.device)
        total = max(1.0, sum(counts))
        targets = self.mix.target_ratios()
        return {n: {"target": round(targets[n], 4), "actual": round(k / total, 4), "samples": int(k)}
                for n, k in zip(names, counts)}

    def _writer(self):
        if not (self.c.tensorboard and self.info.is_main):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tb"))

    def _log(self, w: dict[str, float], lr_factor: float, norm: float, path: Path, writer) -> None:
        loss, samples, tokens, wait, elapsed = xdist.all_reduce(
            [w["loss"], w["samples"], w["tokens"], w["wait"], w["time"]], self.info.device)
        world = self.info.world_size
        elapsed = max(elapsed / world, 1e-9)  # ranks run in step: average wall time
        skipped: dict[str, int] = {}
        for state in self.loader_states.values():
            for reason, n in state.get("skipped", {}).items():
                skipped[reason] = skipped.get(reason, 0) + n
        record = {"step": self.step, "loss": loss / max(1, w["n"]) / world, "lr": self.c.optim.lr * lr_factor,
                  "grad_norm": norm, "samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed,
                  "step_time_s": elapsed / max(1, w["n"]), "data_wait_frac": wait / world / elapsed,
                  "skipped": skipped, "mix": self.realized_ratios()}
        if self.info.is_main:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait_frac"):
                    writer.add_scalar(f"train/{key}", record[key], self.step)
                for name, r in record["mix"].items():
                    writer.add_scalar(f"mix/{name}", r["actual"], self.step)
                writer.add_scalar("data/skipped", sum(skipped.values()), self.step)

    def save(self) -> Path:
        states = {}
        for part in xdist.gather_objects(self.loader_states):
            states.update(part)
        state = {"step": self.step, "world_size": self.info.world_size,
                 "batches_per_rank": self.step * self.c.optim.grad_accum, "loader": states,
                 "stream_counts": xdist.gather_objects(self.stream_counts),  # per rank
                 "mix_fingerprint": self.mix.fingerprint()}
        self.last_checkpoint = save_checkpoint(
            self.run_dir, self.step, self.module, self.optimizer, self.ema, self.generator, state,
            self.model_config.to_dict(), self.c.lora.rank > 0, self.info.rank, self.c.keep_checkpoints)
        return self.last_checkpoint

    def export(self) -> None:
        """final/ (and final-ema/ with EMA): loadable checkpoint folders of the trained model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        weights = {_fqn(k): v for k, v in weights.items()}
        ema = self.ema.full_state() if self.ema is not None else None
        if self.info.is_main:
            # The squarest bucket trained on: what generation defaults to with this model.
            size = choose_bucket(self.dataset.buckets, 1, 1)
            export_model(self.run_dir / "final", weights, self.c, self.model_config, self.tokenizer_dir,
                         self.codec, size)
            if ema is not None:
                export_model(self.run_dir / "final-ema", {**weights, **ema}, self.c, self.model_config,
                             self.tokenizer_dir, self.codec, size)
        xdist.all_reduce([0.0], self.info.device)


def _fqn(name: str) -> str:
    """A parameter's name in the model, without the DDP (`module.`) and TrainModule (`model.`) wrappers."""
    return name.removeprefix("module.").removeprefix("model.")




def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    trainer = Trainer(config, resume=resume)
    finished = False
    try:
        summary = trainer.train()
        finished = True
        return summary
    finally:
        xdist.cleanup(finished)
