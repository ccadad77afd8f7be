"""``embedlab experiments``: DVC's experiments as one short table: the params that differ, every model's mAP@k.

``dvc exp show`` has a column for every param and every metric of every file (hundreds on this pipeline), so the
answer to "which run is better" is lost in a wide terminal. This reads the same data through DVC's own API
(``dvc.api.exp_show``) and keeps only what answers it: one row per commit and experiment, the params whose values
differ between the rows, and the headline metric of each model from ``metrics/retrieval/<model>.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embedlab.core.errors import UserError
from embedlab.core.layout import Layout

RETRIEVAL = Layout().metrics("retrieval").as_posix() + "/"  # as DVC names the files: relative to the repo
_BOOKKEEPING = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


def _model_of(header: str, metric: str) -> str | None:
    """``metrics/retrieval/<model>.json:<metric>`` -> ``<model>`` (DVC prefixes a name that several files share)."""
    path, _, name = header.rpartition(":")
    if name != metric or not path.startswith(RETRIEVAL) or not path.endswith(".json"):
        return None
    return path.removeprefix(RETRIEVAL).removesuffix(".json")


def _is_param(header: str, metric_names: set[str]) -> bool:
    """A param column: not bookkeeping, not a metric, not a dependency (DVC names those by their path)."""
    if header in _BOOKKEEPING or header in metric_names:
        return False
    return "/" not in header or header.startswith("params.yaml:")


def _metric_names(repo: Path) -> set[str]:
    """The keys of every metrics file: DVC shows a key that only one file has without its file's path."""
    import json

    def keys(tree: dict, prefix: str = "") -> set[str]:  # DVC names a nested key by its dotted path
        found = set()
        for key, value in tree.items():
            found |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return found

    names: set[str] = set()
    for path in Layout(repo).metrics().rglob("*.json"):
        data = json.loads(path.read_text())
        names |= keys(data) if isinstance(data, dict) else set()
    return names


def experiment_table(
    repo: str | Path = ".", *, metric: str = "map@5", order: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """The header and the rows: experiment, the params that differ between rows, then ``metric`` per model (the
    models in ``order`` first, as named there; any other after them)."""
    import dvc.api

    try:
        rows = dvc.api.exp_show(repo=str(repo))
    except Exception as err:  # DVC's errors: not a DVC repository, no git, no commit
        raise UserError(
            f"experiments: cannot read DVC experiments in {Path(repo).resolve()} ({type(err).__name__}: {err}); "
            "run it in the project's git clone"
        ) from None
    if not rows:
        raise UserError("experiments: nothing to show (no commit yet?)")
    models = {header: _model_of(header, metric) for header in rows[0]}
    rank = {name: i for i, name in enumerate(order)}
    models = dict(sorted(((h, m) for h, m in models.items() if m), key=lambda item: rank.get(item[1], len(rank))))
    if not models:
        raise UserError(f"experiments: no {RETRIEVAL}*.json has {metric}; run `dvc repro` (or `dvc exp run`) first")
    metric_names = _metric_names(Path(repo))
    changed = [
        header
        for header in rows[0]
        if _is_param(header, metric_names) and len({repr(row.get(header)) for row in rows}) > 1
    ]
    header = ["experiment", *(name.removeprefix("params.yaml:") for name in changed), *models.values()]
    table = []
    for row in rows:
        name = row.get("Experiment") or row.get("rev") or ""
        label = name if row.get("typ") == "baseline" else f"  {name}"
        cells = [_cell(row.get(h)) for h in changed] + [_cell(row.get(h)) for h in models]
        table.append([label, *cells])
    return header, table


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:g}"
    return str(value)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(width) if i and _numeric(cell) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
