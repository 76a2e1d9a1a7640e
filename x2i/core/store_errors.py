"""What an object store's infrastructure errors say (x2i/core/storage.py): one line naming the cause and the setting to
check, for the store at hand (S3, GCS or the Hugging Face Hub), never another store's."""
from __future__ import annotations

from typing import TYPE_CHECKING

from x2i.core.errors import X2IError

if TYPE_CHECKING:
    from x2i.core.storage import Storage


def check_reachable(store: Storage) -> None:
    """Fail early, in one line, when an object store's bucket is missing or its endpoint unreachable."""
    if store.is_local:
        return
    import pyarrow.fs as pafs

    parts = store.base.split("/")
    # The bucket; on the Hub the repo (datasets/ORG/NAME, or ORG/NAME for a model repo).
    bucket = "/".join(parts[:3] if parts[0] in ("datasets", "spaces") else parts[:2]) if store.scheme == "hf" \
        else parts[0]
    try:
        info = store.fs.get_file_info(bucket)
    except OSError as exc:
        refused = http_status(exc) in (401, 403)
        raise X2IError(f"{store.uri}: {'the credentials were refused by' if refused else 'cannot reach'} the "
                       f"{store.scheme} store ({one_line_cause(exc)}); {_FIX[store.scheme]}") from None
    if info.type == pafs.FileType.NotFound:
        if store.scheme == "hf":
            kind = "dataset repo" if parts[0] == "datasets" else "space" if parts[0] == "spaces" else "model repo"
            repo = bucket.split("/", 1)[1] if parts[0] in ("datasets", "spaces") else bucket
            raise X2IError(f"{store.uri}: {kind} {repo!r} does not exist (or HF_TOKEN cannot see it: a private "
                           "repo needs a token with read access); create it on the Hub, or check the name and HF_TOKEN")
        raise X2IError(f"{store.uri}: bucket {bucket!r} does not exist (or these credentials cannot see it)")


# What to check when a store cannot be reached (each names its own settings, not another store's).
_FIX = {"s3": "check AWS_ENDPOINT_URL, the network and the credentials",
        "gs": "check STORAGE_EMULATOR_HOST or GOOGLE_APPLICATION_CREDENTIALS, and the network",
        "hf": "check HF_TOKEN (a token the Hub refuses: 401), HF_ENDPOINT and the network"}


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an error that carries its response (huggingface_hub's), else None."""
    return getattr(getattr(exc, "response", None), "status_code", None)


def one_line_cause(exc: BaseException) -> str:
    """An error as one short line. huggingface_hub's HTTP errors span lines (with a documentation link): keep
    the status and the Hub's own message."""
    response, status = getattr(exc, "response", None), http_status(exc)
    if status is not None:
        server = getattr(exc, "server_message", None) or getattr(response, "reason_phrase", "") or ""
        return " ".join(f"HTTP {status} {server}".split()) + f" for {getattr(response, 'url', '')}"
    return " ".join(str(exc).split())
