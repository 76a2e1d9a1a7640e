"""Optional dependencies: which pip extra provides a module, and one user error when it is not installed.

A core install (`pip install -e .`) has no torch, transformers, diffusers, ...; code that needs one calls
`require("torch", "model", "x2i train")` (or lets the CLI translate the ModuleNotFoundError) so the user sees
`x2i train needs the 'model' extra: pip install 'x2i[model]'` instead of a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from x2i.core.errors import X2IError

# pip extra -> the import names its packages provide; mirrors [project.optional-dependencies] in pyproject.toml
# (tests/core/test_extras.py checks the two agree). Order matters: a module in several extras is attributed to
# the first one listing it unless the caller names the extra it needs.
EXTRAS: dict[str, tuple[str, ...]] = {
    "model": ("torch", "torchvision", "safetensors", "tokenizers", "transformers", "diffusers", "peft",
              "tensorboard"),
    "annotators": ("torch", "torchvision", "controlnet_aux", "transformers", "timm", "safetensors",
                   "huggingface_hub"),
    "curation": ("torch", "torchvision", "open_clip", "safetensors", "huggingface_hub"),
    "publish": ("huggingface_hub", "datasets"),
    "notebooks": ("nbclient", "nbformat", "ipykernel"),
}


class MissingExtra(X2IError):
    """An optional dependency is not installed: names what needs it and the pip extra that installs it."""

    def __init__(self, module: str, extra: str, what: str):
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'x2i[{extra}]' "
                         f"(module {module!r} is not installed)")
        self.module = module
        self.extra = extra
        self.what = what


def extra_for(module: str, prefer: str | None = None) -> str | None:
    """The extra that installs `module` (`prefer` when it lists the module), or None if no extra does."""
    top = module.split(".")[0]
    if prefer is not None and top in EXTRAS.get(prefer, ()):
        return prefer
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def missing_extra(exc: ModuleNotFoundError, what: str, prefer: str | None = None) -> MissingExtra | None:
    """The MissingExtra for an import failure, or None when the missing module belongs to no extra (a bug or a
    broken install, which must surface as the original error)."""
    name = exc.name or ""
    extra = extra_for(name, prefer)
    return None if extra is None else MissingExtra(name.split(".")[0], extra, what)


def require(module: str, extra: str | None = None, what: str = "this feature") -> ModuleType:
    """Import and return `module`; raise MissingExtra if it, or an optional module it imports, is missing.

    `extra` names the extra the caller needs (e.g. "annotators" for torch in an annotator); by default the
    first extra listing the module. `what` is the subject of the message, e.g. "x2i train"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if extra is not None and (exc.name or "").split(".")[0] == module.split(".")[0]:
            raise MissingExtra(module.split(".")[0], extra, what) from None
        error = missing_extra(exc, what, extra)
        if error is None:
            raise
        raise error from None


__all__ = ["EXTRAS", "MissingExtra", "extra_for", "missing_extra", "require"]
