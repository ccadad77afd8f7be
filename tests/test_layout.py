"""The package's shape (docs/architecture.md): small files and functions, and only the modules that must write
files do."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "embedlab"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60
WRITE_CALLS = {
    "write_json", "write_npz", "write_tree", "save_figure", "savefig", "write_text", "write_bytes", "atomic_file",
    "atomic_dir", "atomic_path", "save_weights", "to_csv", "write_array",
}  # fmt: skip
# The modules allowed to write files, and why (docs/architecture.md, "Rule 2"). Every other module returns data and
# its stage script writes it.
WRITERS = {
    "fsutil.py": "the atomic writers themselves",
    "model_io.py": "the model file formats",
    "checkpoints.py": "resume checkpoints, written while training runs",
    "embeddings.py": "the embeddings file format (EmbeddingSet.save, called by the stages)",
    "stacking.py": "the stacker file format (Stacker.save, called by the stack stage)",
    "data/sources.py": "download streams thousands of images into the directory its stage passes",
    "data/raw.py": "the same, image by image",
    "data/prepare.py": "preprocess streams the resized images into the directory its stage passes",
    "export.py": "`embedlab export` streams large files block by block",
    "results.py": "`embedlab results collect` copies a run into a results folder",
    "cli.py": "the command line writes what its user asks for",
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_no_file_over_300_lines_and_no_function_over_60() -> None:
    too_long = []
    for path in _modules():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{_name(path)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long


def test_only_the_listed_modules_write_files() -> None:
    writing = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in WRITE_CALLS:
                    writing.add(_name(path))
    assert writing <= set(WRITERS), f"library modules that write files: {sorted(writing - set(WRITERS))}"


def test_every_public_function_and_class_has_a_docstring() -> None:
    missing = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for scope in [tree, *(n for n in tree.body if isinstance(n, ast.ClassDef))]:
            for node in scope.body:
                defines = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                if defines and not node.name.startswith("_") and not ast.get_docstring(node):
                    missing.append(f"{_name(path)}:{node.lineno} {node.name}")
    assert not missing
