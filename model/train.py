"""The rectified-flow trainer: OmniGen trained straight off a mix of x2i datasets.

Per optimizer step, on every rank: `grad_accum` batches from the mix loader; latents from the codec (or the latent
cache); t ~ sigmoid(N(0, 1)), x_t = t x1 + (1 - t) noise, target x1 - noise; per-sample velocity MSE, where the
changed latent pixels of image_edit rows weigh `edit_loss_weight` and the rest 1 (OmniGen meant to amplify edited
regions and left it as a TODO; our builders record the exact change mask); AdamW on fp32 master weights with
linear warmup, gradient clipping, optional EMA; bf16 autocast on GPU. A non-finite loss or gradient stops the
run (on every rank at once) with the last good checkpoint left in place.

The run folder: config.yaml (resolved), mix.json (streams and target ratios), tokenizer/, log.jsonl, tb/
(TensorBoard), checkpoints/step-*/ (train_state.py), final/ (and final-ema/): the trained model as a checkpoint
folder (LoRA runs: adapter/ in peft's format, plus the merged model).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from x2i.config import to_dict
from x2i.errors import X2IError

from . import dist as xdist
from .checkpoint import detect_layout, load_model
from .config import PRESETS, OmniGenConfig, build_config
from .flow import flow_matching_loss
from .loader import Batch, Geometry, MixLoader, make_dataloader
from .lora import add_lora, base_omnigen
from .mix import Mix, load_mix
from .omnigen import OmniGen
from .processor import Processor
from .tokenizer import TextTokenizer, build_tiny_tokenizer
from .train_config import TrainConfig
from .train_state import EMA, list_checkpoints, load_checkpoint, save_checkpoint
from .trained import build_codec, export_model

# Settings a resumed run may change; anything else must match the run it continues.
RESUMABLE_CHANGES = {"steps", "log_every", "save_every", "keep_checkpoints", "tensorboard", "progress", "device",
                     "export"}


class TrainingStopped(X2IError):
    """Training cannot go on (non-finite loss or gradients); the message names the last good checkpoint."""


def _lr_factor(step: int, c: TrainConfig) -> float:
    o = c.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, c.steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, path + ".")
        elif a != b and path not in RESUMABLE_CHANGES:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, mix: Mix | None = None):
        self.c = config
        self.run_dir = Path(config.run_dir)
        self.info = xdist.init_distributed(config.dist.strategy, config.dist.backend, config.device)
        dev = self.info.device
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and dev.type == "cuda")
        self.mix = mix or load_mix(config.mix)  # every check of manifests and shards happens here, first
        self._prepare_run_dir(resume)

        init_layout = detect_layout(config.model.init) if config.model.init else None
        self.codec, self.codec_info = build_codec(config.codec, init_layout, self._fit_pca)
        self.codec.to(dev)
        self.model_config, model = self._build_model(init_layout)
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

        geometry = Geometry(self.codec.downsample, self.model_config.patch_size, self.codec_info["fingerprint"])
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
    def _prepare_run_dir(self, resume: bool) -> None:
        existing = list_checkpoints(self.run_dir)
        if existing and not resume:
            raise X2IError(f"{self.run_dir} already holds checkpoints (latest {existing[-1].name}): pass --resume "
                           "to continue that run, or choose another run folder")
        if resume and not existing:
            raise X2IError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        new = to_dict(self.c)
        if resume and (self.run_dir / "config.yaml").is_file():
            import yaml

            old = yaml.safe_load((self.run_dir / "config.yaml").read_text())
            changed = _config_diff(old, new)
            if changed:
                raise X2IError(f"--resume with a different configuration than {self.run_dir / 'config.yaml'}: "
                               + "; ".join(changed))
        self.tokenizer_dir = self.run_dir / "tokenizer"
        if self.info.is_main:
            import yaml

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(new, sort_keys=False))
            (self.run_dir / "mix.json").write_text(json.dumps(
                {"name": self.mix.config.name, "streams": [{"name": s.name, "task": s.task, "rows": s.rows,
                                                            "target_ratio": s.weight, "group": s.group}
                                                           for s in self.mix.streams],
                 "notes": self.mix.notes, "fingerprint": self.mix.fingerprint()}, indent=1))
            if not (self.tokenizer_dir / "tokenizer.json").is_file():
                source = self.c.model.tokenizer or (
                    detect_layout(self.c.model.init).tokenizer_dir if self.c.model.init else None)
                if source == "fit":
                    from .fit_tokenizer import fit_tokenizer, mix_instructions

                    if self.c.model.init:
                        raise X2IError("model.tokenizer: fit is for fresh models; a checkpoint brings its own")
                    vocab = self.c.model.overrides.get("vocab_size", PRESETS[self.c.model.preset].get("vocab_size"))
                    fit_tokenizer(mix_instructions(self.mix), self.tokenizer_dir, int(vocab or 32064))
                elif source is not None:
                    shutil.copytree(source, self.tokenizer_dir, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "vae", "transformer"))
                else:
                    build_tiny_tokenizer(self.tokenizer_dir)
        xdist.all_reduce([0.0], self.info.device)  # everyone waits for the run folder

    def _fit_pca(self):
        """A patch-PCA codec for this run: fitted once on the mix by rank 0 into <run>/codec, loaded after."""
        from .patch_pca import PatchPCACodec, sample_images

        folder = self.run_dir / "codec"
        c = self.c.codec
        if self.info.is_main and not (folder / "codec.json").is_file():
            side = int(math.isqrt(self.c.loader.max_pixels)) // c.pca_factor * c.pca_factor
            images = sample_images(self.mix, (side, side), c.pca_images, self.c.seed)
            PatchPCACodec.fit(images, c.pca_factor, c.pca_components, c.pca_whiten).save(folder)
        xdist.all_reduce([0.0], self.info.device)
        return PatchPCACodec.load(folder)

    def _build_model(self, layout) -> tuple[OmniGenConfig, OmniGen]:
        c = self.c.model
        if c.init:
            model = load_model(c.init, dtype=torch.float32)  # fp32 master weights whatever the file holds
            if model.config.in_channels != self.codec.latent_channels:
                raise X2IError(f"{c.init} expects {model.config.in_channels} latent channels, the codec gives "
                               f"{self.codec.latent_channels}")
            return model.config, model
        if c.preset not in PRESETS:
            raise X2IError(f"unknown model preset {c.preset!r}; known: {sorted(PRESETS)}")
        unknown = sorted(set(c.overrides) - {f.name for f in dataclasses.fields(OmniGenConfig)})
        if unknown:
            raise X2IError(f"model.overrides: {unknown} are not OmniGenConfig fields")
        # The preset builder makes stand-in LongRoPE factors for the (possibly overridden) head size.
        try:
            config = build_config(**{**PRESETS[c.preset], **c.overrides, "in_channels": self.codec.latent_channels})
        except (TypeError, ValueError) as exc:
            raise X2IError(f"model.overrides: {exc}") from None
        torch.manual_seed(self.c.seed)
        return config, OmniGen(config)

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
        from .vae import to_model_latents

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
            losses = flow_matching_loss(self.module, cond, x1, loss_mask=weights, generator=self.generator)
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
        c, info = self.c, self.info
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
                factor = _lr_factor(self.step, c)
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
        return {"step": self.step, "loss": last_loss, "run_dir": str(self.run_dir), "mix": self.realized_ratios()}

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
        for part in _gather(self.loader_states):
            states.update(part)
        state = {"step": self.step, "world_size": self.info.world_size,
                 "batches_per_rank": self.step * self.c.optim.grad_accum, "loader": states,
                 "stream_counts": _gather(self.stream_counts),  # per rank
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
            export_model(self.run_dir / "final", weights, self.c, self.model_config, self.tokenizer_dir,
                         self.codec_info)
            if ema is not None:
                export_model(self.run_dir / "final-ema", {**weights, **ema}, self.c, self.model_config,
                             self.tokenizer_dir, self.codec_info)
        xdist.all_reduce([0.0], self.info.device)


def _fqn(name: str) -> str:
    """A parameter's name in the model, without the DDP (`module.`) and TrainModule (`model.`) wrappers."""
    return name.removeprefix("module.").removeprefix("model.")


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.train()
    finally:
        xdist.cleanup()
