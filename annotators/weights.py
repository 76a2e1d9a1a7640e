"""Where an annotator's weight files come from: explicit path, then `X2I_ANNOTATOR_DIR`, then the Hugging Face cache.

Resolution never touches the network: a build only reads files that are already on disk, so it behaves the same
online, offline and on a cluster. `fetch` is the one place that downloads, and it refuses in offline mode.

Layouts looked at, in order, for a weight spec (a Hugging Face repo id and the files the loader needs):
1. an explicit directory (recipe `params.weights.<annotator>` or the Python API) holding the files;
2. `$X2I_ANNOTATOR_DIR/<repo_id>/` holding the files (what `x2i annotators fetch --to DIR` writes);
3. the Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`),
   a snapshot of `<repo_id>` holding every file (what `hf_hub_download` and `fetch` without `--to` write).
A missing file raises `MissingWeights`, one message naming the files, every place looked and how to get them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from x2i.errors import X2IError
from x2i.hf_cache import hf_cache_dir, hf_offline

ENV_DIR = "X2I_ANNOTATOR_DIR"


class MissingWeights(X2IError):
    """An annotator's weight files are not on disk in any of the places looked at."""

    def __init__(self, annotator: str, files: list[str], repo_id: str, looked: list[str], fetch_hint: str):
        self.annotator, self.files, self.repo_id, self.looked = annotator, files, repo_id, looked
        super().__init__(f"annotator {annotator!r} needs weight file(s) {', '.join(files)} (Hugging Face repo "
                         f"{repo_id}); looked in: "
                         + "; ".join(looked) + f". {fetch_hint}")


@dataclass(frozen=True)
class WeightSpec:
    """Files an annotator's loader reads, as published in a Hugging Face repo. An entry that is a tuple is a
    list of alternatives (e.g. `model.safetensors` or `pytorch_model.bin`): any one of them will do."""

    repo_id: str
    files: tuple[str | tuple[str, ...], ...]
    licence: str = ""

    def names(self) -> list[str]:
        return [f if isinstance(f, str) else " or ".join(f) for f in self.files]


@dataclass(frozen=True)
class ResolvedWeights:
    directory: Path  # one folder holding every file of the spec at its repo-relative path
    where: str  # "explicit", "X2I_ANNOTATOR_DIR" or "hf-cache"
    files: tuple[str, ...]  # the repo-relative files found (alternatives resolved)

    def path(self, name: str) -> Path:
        return self.directory / name


def _find_in_dir(directory: Path, spec: WeightSpec) -> tuple[str, ...] | None:
    found = []
    for entry in spec.files:
        options = (entry,) if isinstance(entry, str) else entry
        hit = next((f for f in options if (directory / f).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return tuple(found)


def _find_in_hf_cache(cache: Path, spec: WeightSpec) -> tuple[Path, tuple[str, ...]] | None:
    """A snapshot of the repo in the hub cache holding every file (the one `refs/main` points at first)."""
    repo_dir = cache / ("models--" + spec.repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    candidates += sorted((p for p in snapshots.iterdir() if p.is_dir() and p not in candidates),
                         key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        found = _find_in_dir(snap, spec)
        if found is not None:
            return snap, found
    return None


def resolve(annotator: str, spec: WeightSpec, explicit: str | Path | None = None) -> ResolvedWeights:
    """The folder holding `spec`'s files, or MissingWeights naming every place looked."""
    looked = []
    if explicit is not None:
        d = Path(explicit).expanduser()
        found = _find_in_dir(d, spec) if d.is_dir() else None
        if found is not None:
            return ResolvedWeights(d, "explicit", found)
        looked.append(f"explicit path {d} ({'missing files' if d.is_dir() else 'no such directory'})")
    else:
        looked.append("explicit path (none given)")
    env = os.environ.get(ENV_DIR)
    if env:
        d = Path(env).expanduser() / spec.repo_id
        found = _find_in_dir(d, spec) if d.is_dir() else None
        if found is not None:
            return ResolvedWeights(d, ENV_DIR, found)
        looked.append(f"${ENV_DIR}/{spec.repo_id} = {d} ({'missing files' if d.is_dir() else 'no such directory'})")
    else:
        looked.append(f"${ENV_DIR} (not set)")
    cache = hf_cache_dir()
    hit = _find_in_hf_cache(cache, spec)
    if hit is not None:
        return ResolvedWeights(hit[0], "hf-cache", hit[1])
    looked.append(f"Hugging Face cache {cache} (no complete snapshot of {spec.repo_id})")
    hint = (f"Get them with `x2i annotators fetch {annotator}` on a machine with network access (into the "
            f"Hugging Face cache, or `--to DIR` then set {ENV_DIR}=DIR), or download {spec.repo_id} yourself "
            f"and pass the folder as params.weights.{annotator}")
    raise MissingWeights(annotator, spec.names(), spec.repo_id, looked, hint)


def fetch(spec: WeightSpec, to: str | Path | None = None) -> ResolvedWeights:
    """Download `spec`'s files: into `<to>/<repo_id>/` when `to` is given, else into the Hugging Face cache."""
    from huggingface_hub import constants, hf_hub_download

    if hf_offline() or constants.HF_HUB_OFFLINE:
        raise X2IError("HF_HUB_OFFLINE is set: cannot download annotator weights; run `x2i annotators fetch` "
                       "on a machine with network access, then copy the files (see `x2i annotators list`)")
    local_dir = Path(to).expanduser() / spec.repo_id if to is not None else None
    got: list[str] = []
    directory: Path | None = local_dir
    for entry in spec.files:
        options = (entry,) if isinstance(entry, str) else entry
        errors = []
        for name in options:
            try:
                kwargs = {"local_dir": str(local_dir)} if local_dir is not None else {"cache_dir": str(hf_cache_dir())}
                path = Path(hf_hub_download(spec.repo_id, name, **kwargs))
            except Exception as exc:  # not found, no network, auth: try the next alternative
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            got.append(name)
            if directory is None:
                directory = Path(str(path)[: -len(name)]) if str(path).endswith(name) else path.parent
            break
        else:
            raise X2IError(f"cannot download {' or '.join(options)} from {spec.repo_id}: " + "; ".join(errors))
    assert directory is not None
    return ResolvedWeights(directory, "explicit" if local_dir is not None else "hf-cache", tuple(got))
