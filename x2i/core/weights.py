"""Where weight files come from: the one lookup behind annotators, curation models and the OmniGen checkpoint.

A `WeightSpec` names a Hugging Face repo, the files a loader reads (an entry may list alternatives, e.g.
`model.safetensors` or `pytorch_model.bin`) and a kind. `resolve` looks, in order, in
1. an explicit folder (a recipe parameter, `--model DIR`, the Python API);
2. the kind's own environment variable: $X2I_ANNOTATOR_DIR, $X2I_CURATION_DIR or $X2I_OMNIGEN_DIR, with the files
   at `<dir>/<repo_id>/` (layout "repo"; "repo_or_name" also accepts `<dir>/<repo name>/`) or in `<dir>` itself
   (layout "flat");
3. the Hugging Face hub cache (x2i/core/hf_cache.py: `$HF_HUB_CACHE`, else `$HF_HOME/hub`), a snapshot holding every
   file, the one `refs/main` names first;
4. a download into that cache, only when the caller allows it and HF_HUB_OFFLINE is not set.
A folder missing any file is passed over. Nothing found raises `MissingWeights`: one line naming the files, every
place looked and how to get them (the CLI prints it and exits 2). Lookup itself never touches the network, so a
build behaves the same online, offline and on a cluster.

Where a file exists in a safetensors form and a pickle form (.bin/.pth/.pt), the safetensors one is taken first
(issue 11): alternatives are tried safetensors-first whatever order a spec lists them in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from x2i.core.errors import X2IError
from x2i.core.hf_cache import hf_cache_dir, hf_offline

ENV_VARS = {"annotator": "X2I_ANNOTATOR_DIR", "curation": "X2I_CURATION_DIR", "omnigen": "X2I_OMNIGEN_DIR"}
LAYOUTS = ("repo", "repo_or_name", "flat")


def safetensors_first(options: tuple[str, ...]) -> tuple[str, ...]:
    """The same alternatives, safetensors files first (stable otherwise): never a pickle when a safe form exists."""
    return tuple(sorted(options, key=lambda name: not name.endswith(".safetensors")))


@dataclass(frozen=True)
class WeightSpec:
    """Files a loader reads, as published in a Hugging Face repo. An entry that is a tuple lists alternatives:
    any one of them will do. `kind` picks the environment variable; `layout` where files sit under it;
    `also_repos`: other repos publishing the same model, looked up in the cache after `repo_id`."""

    repo_id: str
    files: tuple[str | tuple[str, ...], ...]
    licence: str = ""
    kind: str = "annotator"
    layout: str = "repo"
    also_repos: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ENV_VARS:
            raise ValueError(f"unknown weight kind {self.kind!r}; known: {sorted(ENV_VARS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown weight layout {self.layout!r}; known: {LAYOUTS}")

    @property
    def env_var(self) -> str:
        return ENV_VARS[self.kind]

    def alternatives(self) -> list[tuple[str, ...]]:
        return [safetensors_first((f,) if isinstance(f, str) else tuple(f)) for f in self.files]

    def names(self) -> list[str]:
        return [" or ".join(options) for options in self.alternatives()]

    def repos(self) -> list[str]:
        return [r for r in (self.repo_id, *self.also_repos) if r]


class MissingWeights(X2IError):
    """Weight files that are in none of the places looked at."""

    def __init__(self, who: str, files: list[str], repo_id: str, looked: list[str], hint: str):
        self.who, self.files, self.repo_id, self.looked, self.hint = who, list(files), repo_id, list(looked), hint
        repo = f" (Hugging Face repo {repo_id})" if repo_id else ""
        super().__init__(f"{who} needs weight file(s) {', '.join(files)}{repo}; looked in: " + "; ".join(looked)
                         + f". {hint}")

    def __reduce__(self):  # rebuilt from its parts across process pools and Ray
        return (type(self), (self.who, self.files, self.repo_id, self.looked, self.hint))


@dataclass(frozen=True)
class ResolvedWeights:
    directory: Path  # one folder holding every file of the spec at its repo-relative path
    where: str  # "explicit", the environment variable's name or "hf-cache"
    files: tuple[str, ...]  # the repo-relative files found (alternatives resolved)

    def path(self, name: str) -> Path:
        return self.directory / name


def find_in_dir(directory: Path, spec: WeightSpec) -> tuple[str, ...] | None:
    """The spec's files in `directory` (first present alternative of each), or None when one is missing."""
    if not directory.is_dir():
        return None
    found = []
    for options in spec.alternatives():
        hit = next((f for f in options if (directory / f).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return tuple(found)


def find_in_hf_cache(repo_id: str, spec: WeightSpec, cache: Path | None = None) -> ResolvedWeights | None:
    """A snapshot of `repo_id` in the hub cache holding every file: the one `refs/main` points at, then the
    others, newest first."""
    repo_dir = (cache or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
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
        found = find_in_dir(snap, spec)
        if found is not None:
            return ResolvedWeights(snap, "hf-cache", found)
    return None


def _state(directory: Path) -> str:
    return "missing files" if directory.is_dir() else "no such directory"


def env_dirs(spec: WeightSpec) -> list[tuple[str, Path]]:
    """(how to name it, folder) for each place under the kind's environment variable; [] when it is unset."""
    value = os.environ.get(spec.env_var)
    if not value:
        return []
    root = Path(value).expanduser()
    if spec.layout == "flat":
        return [(f"${spec.env_var}", root)]
    rels = [spec.repo_id] + ([spec.repo_id.split("/")[-1]] if spec.layout == "repo_or_name" else [])
    return [(f"${spec.env_var}/{rel}", root / rel) for rel in dict.fromkeys(rels)]


def default_hint(spec: WeightSpec) -> str:
    files = " ".join(options[0] for options in spec.alternatives())
    return (f"Download them on a machine with network access (`huggingface-cli download {spec.repo_id} {files}`) "
            f"into the Hugging Face cache, or into a folder DIR/{spec.repo_id if spec.layout != 'flat' else ''} "
            f"and set {spec.env_var}=DIR")


def resolve(spec: WeightSpec, explicit: str | Path | None = None, *, who: str | None = None,
            hint: str | None = None, use_env: bool = True, use_cache: bool = True,
            allow_download: bool = False) -> ResolvedWeights:
    """The folder holding `spec`'s files, or MissingWeights naming every place looked (see the module doc)."""
    looked = []
    if explicit is not None:
        d = Path(explicit).expanduser()
        found = find_in_dir(d, spec)
        if found is not None:
            return ResolvedWeights(d, "explicit", found)
        looked.append(f"local directory {d} ({_state(d)})")
    else:
        looked.append("local directory (none given)")
    if use_env:
        places = env_dirs(spec)
        for name, d in places:
            found = find_in_dir(d, spec)
            if found is not None:
                return ResolvedWeights(d, spec.env_var, found)
            looked.append(f"{name} = {d} ({_state(d)})")
        if not places:
            looked.append(f"${spec.env_var} (unset)")
    if use_cache:
        cache = hf_cache_dir()
        for repo in spec.repos():
            hit = find_in_hf_cache(repo, spec, cache)
            if hit is not None:
                return hit
            looked.append(f"Hugging Face cache {cache} (no complete snapshot of {repo})")
        if allow_download and hf_offline():
            looked.append("no download: HF_HUB_OFFLINE is set")
        elif allow_download:
            try:
                return fetch(spec)
            except X2IError as exc:  # every alternative failed (network, auth, missing file): say so below
                looked.append(f"download of {spec.repo_id} failed ({str(exc)[:200]})")
    raise MissingWeights(who or f"{spec.kind} {spec.repo_id}", spec.names(), spec.repo_id, looked,
                         hint or default_hint(spec))


def fetch(spec: WeightSpec, to: str | Path | None = None) -> ResolvedWeights:
    """Download `spec`'s files (alternatives tried safetensors-first): into `<to>/<repo_id>/` (`<to>/` for a flat
    layout) when `to` is given, else into the Hugging Face cache. Refused when offline."""
    from huggingface_hub import hf_hub_download

    # The environment at call time, not huggingface_hub's constants: those are frozen at its first import.
    if hf_offline():
        raise X2IError(f"HF_HUB_OFFLINE is set: cannot download {spec.repo_id}; fetch the weights on a machine "
                       "with network access, then copy the files")
    local_dir = None
    if to is not None:
        local_dir = Path(to).expanduser() / (spec.repo_id if spec.layout != "flat" else "")
    got: list[str] = []
    directory: Path | None = local_dir
    for options in spec.alternatives():
        errors = []
        for name in options:
            try:
                kwargs = {"local_dir": str(local_dir)} if local_dir is not None else {"cache_dir": str(hf_cache_dir())}
                path = Path(hf_hub_download(spec.repo_id, name, **kwargs))
            except Exception as exc:  # noqa: BLE001 - not found, no network, auth: try the next alternative
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            got.append(name)
            if directory is None:
                directory = Path(str(path)[: -len(name)]) if str(path).endswith(name) else path.parent
            break
        else:
            raise X2IError(f"cannot download {' or '.join(options)} from {spec.repo_id}: " + "; ".join(errors))
    assert directory is not None  # spec.files is never empty
    return ResolvedWeights(directory, "explicit" if local_dir is not None else "hf-cache", tuple(got))
