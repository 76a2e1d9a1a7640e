"""Run the QA notebooks headless with parameters, and keep them output-free in git.

A notebook's parameters live in its first cell tagged `parameters` (papermill's convention, so papermill works
too); `inject_parameters` appends the given values to that cell, so defaults not given stay as they are.

    python -m x2i.inspect.notebook notebooks/dataset_qa.ipynb dataset=out/subject-driven per_task=4 -o qa.ipynb
    python -m x2i.inspect.notebook --strip notebooks/*.ipynb      # before committing a notebook you ran by hand
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from x2i.core.errors import X2IError


def inject_parameters(nb: Any, params: dict[str, Any]) -> Any:
    """Append `name = value` lines to the first cell tagged `parameters` (values written with repr)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            lines = [f"{k} = {v!r}" for k, v in params.items()]
            if lines:
                cell.source = cell.source.rstrip("\n") + "\n# injected\n" + "\n".join(lines) + "\n"
            return nb
    raise X2IError("the notebook has no cell tagged 'parameters'")


def execute(path: str | Path, params: dict[str, Any] | None = None, out: str | Path | None = None,
            timeout: int = 600, kernel: str = "python3") -> Any:
    """Execute a notebook (in its own folder) with `params`; write it to `out` if given; return it."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = inject_parameters(nbformat.read(path, as_version=4), params or {})
    NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    if out is not None:
        nbformat.write(nb, str(out))
    return nb


def strip(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    after = nbformat.writes(nb)
    if after != before:
        Path(path).write_text(after)
    return after != before


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: dataset=out/x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m x2i.inspect.notebook", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", help="notebook (one, to run) or notebooks (with --strip)")
    parser.add_argument("-o", "--out", help="where to write the executed notebook")
    parser.add_argument("--strip", action="store_true", help="strip outputs in place instead of running")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args, rest = parser.parse_known_args(argv)
    if args.strip:
        for nb in args.notebooks + rest:
            print(f"{nb}: {'stripped' if strip(nb) else 'already clean'}")
        return
    params = {}
    for item in args.notebooks[1:] + rest:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"parameters are name=value, got {item!r}")
        value = _value(value)
        # The kernel runs in the notebook's folder: paths given relative to where the command runs are made absolute.
        if isinstance(value, str) and value and Path(value).exists():
            value = str(Path(value).resolve())
        params[key] = value
    execute(args.notebooks[0], params, args.out, args.timeout)
    print(f"executed {args.notebooks[0]}" + (f" -> {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
