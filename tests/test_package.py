"""The package's shape (docs/architecture.md): short functions and classes, and only the modules that must write
files do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "embedlab"


MAX_CLASS_LINES = 150


MAX_FUNCTION_LINES = 60


WRITE_CALLS = {
    "write_json", "write_npz", "write_tree", "save_figure", "savefig", "write_text", "write_bytes", "atomic_file",
    "atomic_dir", "atomic_path", "save_weights", "to_csv", "write_array", "savez", "savez_compressed", "mkstemp",
    "mkdtemp",
}  # fmt: skip


MODULE_WRITE_CALLS = {"os": {"replace", "rename"}, "shutil": {"copy", "copy2", "copyfile", "copytree", "move"}}


OPEN_CALLS = {"open", "fdopen"}  # they write when their mode says so: "w", "a", "x" or "+"


# The modules allowed to write files, and why (docs/architecture.md, "Rule 2"). Every other module returns data and
# its stage script writes it.
WRITERS = {
    "core/files.py": "the atomic writers themselves",
    "models/io.py": "the model file formats",
    "train/checkpoints.py": "resume checkpoints, written while training runs",
    "embed/embeddings.py": "the embeddings file format (EmbeddingSet.save, called by the stages)",
    "stack/stacker.py": "the stacker file format (Stacker.save, called by the stack stage)",
    "data/download/__init__.py": "download streams thousands of images into the directory its stage passes",
    "data/raw.py": "the same, image by image",
    "data/download/http.py": "the download appends to a partial file, so a cut connection resumes where it stopped",
    "data/prepare.py": "preprocess streams the resized images into the directory its stage passes",
    "cli/export.py": "`embedlab export` streams large files block by block",
    "cli/results.py": "`embedlab results collect` copies a run into a results folder",
    "cli/__init__.py": "the command line writes what its user asks for",
    "serve/sources.py": "`serve --rev` copies a revision's outputs, read through DVC, into DVC's scratch folder",
    "cli/reference.py": "`python -m embedlab.cli.reference` rewrites the generated part of docs/parameters.md",
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_no_function_over_60_lines_and_no_class_over_150() -> None:
    too_long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    too_long.append(f"{_name(path)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long


def _writes(call: ast.Call) -> bool:
    """A call that writes a file: a writer by name, or ``open``/``Path.open``/``os.fdopen`` with a writing mode (any
    string the mode expression could take: ``"ab" if resumed else "wb"`` counts)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    if name in WRITE_CALLS or name in MODULE_WRITE_CALLS.get(owner or "", ()):
        return True
    if name not in OPEN_CALLS:
        return False
    mode_at = 0 if isinstance(func, ast.Attribute) and name == "open" else 1  # Path.open(mode), open(path, mode)
    modes = [kw.value for kw in call.keywords if kw.arg == "mode"] + call.args[mode_at : mode_at + 1]
    texts = [n.value for mode in modes for n in ast.walk(mode) if isinstance(n, ast.Constant)]
    return any(isinstance(t, str) and re.fullmatch(r"[rwaxbt+]+", t) and set(t) & set("wax+") for t in texts)


def test_only_the_listed_modules_write_files() -> None:
    writing = {_name(path) for path in _modules() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Call) and _writes(node)}  # fmt: skip
    assert writing <= set(WRITERS), f"library modules that write files: {sorted(writing - set(WRITERS))}"
    assert len(writing) == len(WRITERS), f"listed as writers but writing nothing: {sorted(set(WRITERS) - writing)}"


def test_the_write_detector_sees_every_way_to_write() -> None:
    def writes(source: str) -> bool:
        return _writes(ast.parse(source).body[0].value)

    for source in ('open(p, "wb")', 'open(p, "ab" if r else "wb")', 'open(p, mode="x")', 'p.open("a")',
                   'os.fdopen(fd, "w")', "np.savez(h, *w)", "shutil.copy2(a, b)", "os.replace(a, b)"):  # fmt: skip
        assert writes(source), source
    for source in ('open(p, "rb")', "open(p)", 'p.open("r")', "Prepared.open(root)", "np.load(p)", "s.replace(a, b)"):
        assert not writes(source), source


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


# The package's layers, bottom first (docs/architecture.md): a folder imports only from the layers below it.
LAYERS = (("core",), ("data", "augment", "models"), ("embed", "train"), ("retrieval", "cluster"), ("stack",),
          ("serve",), ("cli",))  # fmt: skip


def _module_imports() -> dict[str, set[str]]:
    """Each embedlab module (dotted) -> the embedlab modules it imports anywhere (type-checking-only imports too)."""
    modules = {"embedlab." + _name(p).removesuffix(".py").replace("/", ".").removesuffix(".__init__"): p
               for p in _modules()}  # fmt: skip
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedlab"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_nothing_below_imports_anything_above() -> None:
    rank = {part: level for level, parts in enumerate(LAYERS) for part in parts}
    assert set(rank) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    upward = []
    for module, imported in _module_imports().items():
        part = module.split(".")[1] if module.count(".") else None
        for target in imported:
            target_part = target.split(".")[1]
            if part in rank and target_part != part and rank[target_part] >= rank[part]:
                upward.append(f"{module} -> {target}")
    assert not upward


def test_no_import_circle() -> None:
    graph = _module_imports()
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles
