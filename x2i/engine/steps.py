"""Steps over iterators of samples, and the per-partition context they report to.

A step is a callable `run(samples, ctx) -> samples`. One-to-one work subclasses `MapStep` (return a sample,
a list of samples, or raise `RejectSample`); filters subclass `FilterStep` (return a reason to drop, or None).
Every rejection goes through `ctx.reject`, which counts it per reason and keeps it for the rejects ledger:
nothing is dropped silently.

Only declared failures are data (`RejectSample`, `ImageError`, and what a step lists in `data_errors`). Any
other exception stops the build (`BuildStopped`, one line with the cause and the fix) unless the build was given
an error budget (`max_error_rate` > 0): then an undeclared error on a row is counted as `unexpected_error` and
the partition stops only when such errors exceed that share of its source rows. Environment failures (a missing
module, missing weights, disk errors, out of memory) are never budgeted: they are not about the row.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from x2i.core.errors import BuildStopped, X2IError, describe_stop
from x2i.core.imageio import ImageError
from x2i.core.sample import Reject, RejectSample, Sample

log = logging.getLogger("x2i")


@dataclass
class Context:
    """What a step may touch while processing one partition: counters, rejects, seeded randomness."""

    seed: int = 0
    partition: int = 0
    strict: bool = False  # re-raise undeclared step errors as they are, traceback and all (tests, debugging)
    max_error_rate: float = 0.0  # share of source rows that may fail with an undeclared error (0: none may)
    counts: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)
    reject_counts: Counter = field(default_factory=Counter)

    def rng(self, *key: Any) -> np.random.Generator:
        """A generator seeded by (recipe seed, key): the same sample always draws the same choices."""
        digest = hashlib.sha256(repr((self.seed,) + key).encode()).digest()
        # PCG64 seeded directly: the SeedSequence default_rng adds costs ~3 us per call, and this runs per sample.
        return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))

    def reject(self, sample: Sample | None, reason: str, step: str, detail: str = "", *,
               source: str = "", source_key: str = "", task: str = "", meta: dict | None = None) -> None:
        if sample is not None:
            source, source_key, task = sample.source, sample.source_key, sample.task
            if meta is None:  # what a retry or a look needs: the URL, or the file and row/line it came from
                meta = {k: sample.meta[k] for k in ("url", "file", "row", "line") if sample.meta.get(k) is not None}
        self.reject_counts[reason] += 1
        self.rejects.append(Reject(reason, source, source_key, task, step, detail, meta or {}))

    def unexpected(self, exc: BaseException, step: str, sample: Sample | None = None, *, source: str = "",
                   source_key: str = "", task: str = "") -> None:
        """An exception no step declared, met on one row: stop the build, or (with an error budget and when the
        error is not about the environment) count the row as an `unexpected_error` reject."""
        if sample is not None:
            source, source_key, task = sample.source, sample.source_key, sample.task
        if self.strict or is_environment_error(exc):
            raise exc
        where = f"step {step} on {source}/{source_key}"
        if self.max_error_rate <= 0:
            raise BuildStopped(describe_stop(exc, where)) from exc
        log.warning("%s: %r (counted as unexpected_error)", where, exc)
        self.counts["unexpected_errors"] += 1
        detail = f"{type(exc).__name__}: {str(exc)[:500]}"
        self.reject(sample, "unexpected_error", step, detail, source=source, source_key=source_key, task=task)

    def check_error_budget(self) -> None:
        """Stop when undeclared errors exceed `max_error_rate` of the source rows read so far."""
        errors = self.counts["unexpected_errors"]
        if errors and errors > self.max_error_rate * max(self.counts["source_samples"], 1):
            raise BuildStopped(f"partition {self.partition}: {errors} unexpected error(s) in "
                               f"{self.counts['source_samples']} source rows exceed --max-error-rate "
                               f"{self.max_error_rate}; see 'unexpected_error' in the log")


def is_environment_error(exc: BaseException) -> bool:
    """Failures of the install, the weights, the disk or the machine: never a bad row, never budgeted."""
    return isinstance(exc, (ImportError, OSError, MemoryError, X2IError)) and not isinstance(exc, ImageError)


class Step:
    """Base class: override `run`."""

    name = "step"
    # Exception types that mean "this row is bad" for this step (beyond RejectSample and ImageError).
    data_errors: tuple[type[Exception], ...] = ()

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        raise NotImplementedError

    def needs(self) -> list[tuple[str, str]]:
        """Optional modules this step imports while running, as (module, extra that installs it): checked
        before any work (x2i.engine.plan.compile_plan), so a missing install stops the build instead of every row."""
        return []

    def _guard(self, sample: Sample, ctx: Context, fn) -> Any:
        """Call fn(); turn the expected failures of one sample into a counted rejection."""
        try:
            return fn()
        except RejectSample as exc:
            ctx.reject(sample, exc.reason, self.name, exc.detail)
        except ImageError as exc:
            ctx.reject(sample, exc.reason, self.name, str(exc))
        except self.data_errors as exc:
            ctx.reject(sample, f"bad_{type(exc).__name__}", self.name, str(exc)[:500])
        except Exception as exc:  # noqa: BLE001 - undeclared: stops the build unless a budget was given
            ctx.unexpected(exc, self.name, sample)
        return None


class MapStep(Step):
    """One sample in, zero or more out: `process` returns a Sample, a list of them, or None."""

    def process(self, sample: Sample, ctx: Context) -> Sample | list[Sample] | None:
        raise NotImplementedError

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for sample in samples:
            out = self._guard(sample, ctx, lambda: self.process(sample, ctx))
            if out is None:
                continue
            if isinstance(out, Sample):
                yield out
            else:
                yield from out


class FilterStep(Step):
    """Keep a sample unless `reason` returns a rejection reason."""

    def reason(self, sample: Sample, ctx: Context) -> str | tuple[str, str] | None:
        raise NotImplementedError

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for sample in samples:
            verdict = self._guard(sample, ctx, lambda: self.reason(sample, ctx) or "")
            if verdict is None:  # the check itself failed and was counted
                continue
            if verdict:
                reason, detail = verdict if isinstance(verdict, tuple) else (verdict, "")
                ctx.reject(sample, reason, self.name, detail)
                continue
            yield sample


class BatchMapStep(Step):
    """Batched one-to-one work (models on GPU): `process_batch` maps a list of samples to a list of results,
    each a Sample or None (None: that sample was rejected inside via ctx.reject). When the batch call fails,
    each sample is retried alone so one bad sample cannot take its batch-mates down with it."""

    batch_size = 16

    def process_batch(self, samples: list[Sample], ctx: Context) -> list[Sample | None]:
        raise NotImplementedError

    def _flush(self, batch: list[Sample], ctx: Context) -> Iterator[Sample]:
        try:
            results = self.process_batch(batch, ctx)
        except Exception as exc:  # noqa: BLE001 - retried one by one below, where each failure is classified
            if ctx.strict or is_environment_error(exc):
                raise
            results = [self._guard(s, ctx, lambda s=s: self.process_batch([s], ctx)[0]) for s in batch]
        yield from (r for r in results if r is not None)

    def run(self, samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
        for batch in batched(samples, self.batch_size):
            yield from self._flush(batch, ctx)


def batched(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    """Lists of `size` samples (the last one shorter), read lazily."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_steps(steps: list[Step], samples: Iterable[Sample], ctx: Context) -> Iterator[Sample]:
    """Chain the steps lazily: one sample flows through all of them before the next is read."""
    stream: Iterable[Sample] = samples
    for step in steps:
        stream = step.run(stream, ctx)
    return iter(stream)
