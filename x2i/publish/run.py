"""`publish(dataset, cfg)`: the whole publish sequence, for `x2i publish`, benchmarks and notebooks alike.

The order is the contract: the repo id and the folder are checked and the token resolved before any work (no
token, nothing done); the dataset must pass `validate` (an unfinished or broken build is never published); then
the repo folder is staged (x2i/publish/hub.py `stage`) and, unless `dry_run`, uploaded in resumable commits.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from x2i.core.errors import X2IError
from x2i.publish.hub import (PublishConfig, Staged, UploadResult, check_repo_id, hub_api, redact, resolve_token,
                             stage, upload)

STAGE_DEFAULT = "_hub"  # the staging folder inside the dataset folder, unless one is given


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def staged_report(staged: Staged) -> str:
    """The staged repo folder: files, sizes and rows per config."""
    lines = [f"staged {staged.root}: {len(staged.files)} file(s), {_size(sum(f.bytes for f in staged.files))}"]
    for name, tasks in staged.configs.items():
        lines.append(f"  config {name}: {sum(staged.tasks[t] for t in tasks)} rows ({', '.join(tasks)})")
    for f in staged.files:
        lines.append(f"  {f.path}  {_size(f.bytes)}" + (f"  {f.rows} rows" if f.task else ""))
    return "\n".join(lines)


def _where(cfg: PublishConfig) -> str:
    return cfg.repo_id + (f" (branch {cfg.revision})" if cfg.revision else "")


@dataclass
class Published:
    """What a publish did (`result` is None for a dry run)."""

    staged: Staged
    cfg: PublishConfig
    result: UploadResult | None

    @property
    def where(self) -> str:
        return _where(self.cfg)

    def summary(self) -> str:
        per_commit = min(self.cfg.files_per_commit, 99)
        if self.result is None:
            data = [f for f in self.staged.files if f.task is not None]
            commits = -(-len(data) // per_commit) + 1
            return (f"dry run: would upload {len(self.staged.files)} file(s) to dataset {self.where} in {commits} "
                    f"commit(s) of at most {per_commit} files (files already on the Hub are skipped); nothing "
                    "uploaded")
        r = self.result
        return (f"published {self.where}: {len(r.uploaded)} file(s) uploaded in {len(r.commits)} commit(s), "
                f"{len(r.skipped)} already there, {len(r.deleted)} stale file(s) removed: {r.url}")


def _check_folder(local: Path, dataset: str | Path) -> None:
    if not local.is_dir() or not (local / "data").is_dir():
        raise X2IError(f"{dataset}: not a dataset folder (expected {str(dataset).rstrip('/')}/data)")


def publish(dataset: str | Path, cfg: PublishConfig, *, dry_run: bool = False, stage_dir: str | Path | None = None,
            decode_images: bool = True, log: Callable[[str], None] = lambda line: None,
            warn: Callable[[str], None] = lambda line: None) -> Published:
    """Validate, stage and (unless `dry_run`) upload `dataset` (a folder, or an s3://, gs://, hf:// URI) to the
    Hub repo `cfg.repo_id`. `log` gets the progress lines and the staged report, `warn` the validation problems.
    Raises X2IError for anything the user can fix (bad repo id, no token, invalid dataset, a refused upload: one
    line, the token never shown)."""
    from x2i.core.storage import check_target, is_uri
    from x2i.inspect.remote import readable
    from x2i.inspect.validate import require_valid

    check_target(dataset)  # `s3:/bucket` is a mangled URI, never a local folder named `s3:`
    check_repo_id(cfg.repo_id)
    if not is_uri(str(dataset)):
        _check_folder(Path(dataset), dataset)
    token = None if dry_run else resolve_token()  # before any work: no token, nothing done
    if stage_dir is None and is_uri(str(dataset)):
        # The Hub upload reads the stage from disk, and the mirror below is temporary: stage beside the cwd.
        stage_dir = Path(STAGE_DEFAULT) / str(dataset).rstrip("/").rsplit("/", 1)[-1]
    # An object-store dataset is validated and staged from a verified local mirror (x2i/inspect/remote.py).
    with readable(dataset) as local:
        _check_folder(local, dataset)
        manifest = require_valid(local, decode_images=decode_images, log=warn)
        staged = stage(local, stage_dir or local / STAGE_DEFAULT, cfg, manifest=manifest, log=log)
    log(staged_report(staged))
    if dry_run:
        return Published(staged, cfg, None)
    try:
        result = upload(staged, hub_api(cfg, token), cfg, log=log)
    except Exception as exc:  # noqa: BLE001 - network, permissions, refusals: raised again as one redacted line
        raise X2IError(redact(f"upload to {_where(cfg)} failed: {type(exc).__name__}: {' '.join(str(exc).split())} "
                              "(finished commits are kept; re-run the same command to resume)", token)) from None
    return Published(staged, cfg, result)


__all__ = ["Published", "STAGE_DEFAULT", "publish", "staged_report"]
