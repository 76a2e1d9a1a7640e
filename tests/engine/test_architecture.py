"""The layering rules of docs/architecture.md, checked on the source with `ast` (imports anywhere in a module,
function-level ones included), so a shortcut across layers fails here rather than in review.

- x2i/ (the core packages) never imports the plugins (x2i.builders, x2i.annotators, x2i.model) nor the CLI, except
  x2i/cli itself; nor names a plugin module in a string (a "module:Class" registry would hide the edge);
- model/ imports no builder and no annotator;
- Ray is imported only by x2i/engine/ray_executor.py (and tests, benchmarks);
- no library file over 400 lines; no CLI function over 45 lines (decorators and option lines included).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each top-level source folder is installed (pyproject.toml's package-dir).
PACKAGES = {"x2i": "x2i", "builders": "x2i.builders", "annotators": "x2i.annotators", "model": "x2i.model"}
PLUGINS = ("x2i.builders", "x2i.annotators", "x2i.model")
MAX_FILE_LINES = 400
MAX_CLI_FUNCTION_LINES = 45
PLUGIN_STRING = re.compile(r"^x2i\.(builders|annotators|model)(\.[\w.]+)?(:\w+)?$")


def library_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from x2i import builders` imports x2i.builders: count the names too
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_core_never_imports_plugins_or_the_cli():
    bad = []
    for path in library_files("x2i"):
        if path.relative_to(ROOT).parts[:2] == ("x2i", "cli"):
            continue
        bad += [f"{path.relative_to(ROOT)}:{line} imports {name}" for line, name in imports(path)
                if under(name, PLUGINS + ("x2i.cli",))]
    assert not bad, "\n".join(bad)


def test_core_names_no_plugin_module_in_a_string():
    """Plugins are found through entry points (pyproject.toml), never through a module path the core spells."""
    bad = []
    for path in library_files("x2i"):
        if path.relative_to(ROOT).parts[:2] == ("x2i", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and PLUGIN_STRING.match(node.value):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}")
    assert not bad, "\n".join(bad)


def test_model_imports_no_builder_or_annotator():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in library_files("model")
           for line, name in imports(path) if under(name, ("x2i.builders", "x2i.annotators", "x2i.cli"))]
    assert not bad, "\n".join(bad)


def test_ray_is_imported_only_by_the_ray_executor():
    allowed = {ROOT / "x2i" / "engine" / "ray_executor.py"}
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for folder in PACKAGES
           for path in library_files(folder) if path not in allowed
           for line, name in imports(path) if under(name, ("ray",))]
    assert not bad, "\n".join(bad)


def test_no_library_file_over_the_limit():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for folder in PACKAGES for path in library_files(folder)
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, "\n".join(long)


def test_cli_functions_are_thin():
    long = []
    for path in library_files("x2i/cli"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if (n := node.end_lineno - start + 1) > MAX_CLI_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_plugins_are_declared_as_entry_points():
    """The registry finds the shipped plugins through these; the core spells no plugin module itself."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["x2i.plugins"]
    assert declared == {"builders": "x2i.builders", "annotators": "x2i.annotators"}


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    """The scanner itself: an import inside a function and a relative one are both found."""
    path = ROOT / "x2i" / "engine" / "build.py"
    names = {name for _, name in imports(path)}
    assert "x2i.engine.plan" in names
    source = ROOT / "annotators" / "depth.py"
    assert "x2i.annotators.base" in {name for _, name in imports(source)}
    cli = ROOT / "x2i" / "cli" / "data.py"
    assert "x2i.engine.build" in {name for _, name in imports(cli)}  # imported inside build_command
