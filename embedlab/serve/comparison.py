"""Several sources side by side: one :class:`Engine` per source (the working tree, a commit, a DVC experiment), one
query answered by every (source, model) row, each row with its source's retrieval metrics and their difference to
the first source's.

Sources are compared on the same images: a source whose prepared dataset differs from the first one's (other
images, classes, image size or fit) is refused with the reason, and the others go on serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from embedlab.core.errors import UserError
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.serve.engine import Engine, InvalidQuery, UnknownImage
from embedlab.serve.sources import WORKSPACE, Revision, SourceError, materialize, resolve

Row = tuple[str, str]  # (source name, model name)


@dataclass
class Source:
    """One loaded source: what it is, its engine, its retrieval metrics per model, its flattened params and the
    cluster stage's maps it has per model (``cluster.method``: tsne, pca or both)."""

    revision: Revision
    layout: Layout
    engine: Engine
    metrics: dict[str, dict[str, float]]
    params: dict[str, object]
    maps: dict[str, list[str]]

    @property
    def name(self) -> str:
        """The name the user gave (``workspace``, ``HEAD``, a branch, tag, experiment or commit)."""
        return self.revision.name

    def metrics_diff(self, reference: Source, model: str) -> dict[str, float]:
        """This source's metrics of ``model`` minus the reference's (only the figures both have)."""
        ours, theirs = self.metrics.get(model, {}), reference.metrics.get(model, {})
        shared = [key for key in ours if isinstance(ours[key], float) and isinstance(theirs.get(key), float)]
        return {key: round(ours[key] - theirs[key], 6) for key in shared}

    def params_diff(self, reference: Source) -> dict[str, dict[str, object]]:
        """The params whose values differ from the reference's, as ``dvc params diff`` lists them."""
        ours, theirs = self.params, reference.params
        changed = [k for k in ours.keys() | theirs.keys() if (k in ours, ours.get(k)) != (k in theirs, theirs.get(k))]
        return {  # a side is left out where its params.yaml does not have the key
            key: {side: values[key] for side, values in (("old", theirs), ("new", ours)) if key in values}
            for key in sorted(changed)
        }

    def describe(self, reference: Source) -> dict:
        """This source in ``/api/info``: what it is, its models, metrics, differences and embedding maps."""
        return {
            **self.revision.as_dict(),
            "models": self.engine.description["models"],
            "metrics": self.metrics,
            "metrics_diff": {model: self.metrics_diff(reference, model) for model in self.metrics},
            "params_diff": self.params_diff(reference),
            "maps": self.maps,
        }


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}``, the keys ``dvc params diff`` prints."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_source(revision: Revision, layout: Layout, engine: Engine) -> Source:
    """A loaded source's figures: its retrieval metrics, its params (flattened) and its maps."""
    metrics = {
        model: json.loads(layout.metrics("retrieval", model).read_text())
        for model in engine.models
        if layout.metrics("retrieval", model).exists()
    }
    methods = load_params(layout.params).cluster.method.split("+")
    maps = {
        model: [m for m in methods if layout.plot("cluster", m, f"{model}.json").exists()] for model in engine.models
    }
    params = flatten(yaml.safe_load(layout.params.read_text()) or {})
    return Source(revision, layout, engine, metrics, params, maps)


def dataset_difference(a: Prepared, b: Prepared) -> str | None:
    """What makes two sources' prepared images differ, or None when they are the same images."""
    if (a.image_size, a.fit) != (b.image_size, b.fit):
        return f"image size {b.image_size} ({b.fit}) against {a.image_size} ({a.fit})"
    if list(a.class_names) != list(b.class_names):
        return f"classes {list(b.class_names)[:4]}… against {list(a.class_names)[:4]}…"
    if len(a.index) != len(b.index) or not np.array_equal(a.index["id"], b.index["id"]):
        return f"{len(b.index):,} images against {len(a.index):,}, or other ids"
    return None


class Comparison:
    """The sources the server holds, in the order they were added; the first one is the reference."""

    def __init__(self, root: Path, models: list[str] | None = None, index: str | None = None) -> None:
        self.root, self.models, self.index = root, models, index
        self.sources: dict[str, Source] = {}
        self.failures: dict[str, str] = {}

    @classmethod
    def load(cls, root: Path, revisions: list[str], models: list[str] | None, index: str | None) -> Comparison:
        """Load each revision; one that fails is recorded with its reason, and the rest load. None loaded: an error."""
        comparison = cls(root, models, index)
        for name in revisions:
            try:
                comparison.add(name)
            except UserError as err:
                comparison.failures[name] = str(err)
        if not comparison.sources:
            reasons = "; ".join(comparison.failures.values())
            raise UserError(reasons if len(revisions) == 1 else f"no source could be loaded: {reasons}")
        return comparison

    @property
    def reference(self) -> Source:
        """The first source: the one the others are compared with, and whose images and thumbnails are served."""
        return next(iter(self.sources.values()))

    @property
    def params(self):
        """The reference's ``serve`` params (limits, k, batching)."""
        return self.reference.engine.params

    def add(self, name: str) -> Source:
        """Load a revision (or the working tree) and compare it with the reference; an already loaded one is kept."""
        if name in self.sources:
            return self.sources[name]
        revision = Revision(WORKSPACE, "workspace", None) if name == WORKSPACE else resolve(self.root, name)
        revision = Revision(name, revision.kind, revision.commit)
        layout = materialize(self.root, revision)
        self._check_dataset(name, layout)
        try:
            engine = Engine(layout, self.models, self.index)
        except UserError as err:  # the working tree's own messages already say where; a revision's name its source
            raise SourceError(str(err) if name == WORKSPACE else f"{name}: {err}") from None
        source = _read_source(revision, layout, engine)
        self.sources = {**self.sources, name: source}  # swapped whole: requests iterate it from other threads
        self.failures.pop(name, None)
        return source

    def _check_dataset(self, name: str, layout: Layout) -> None:
        """Refuse a source whose prepared images are not the reference's, before its models are loaded for images
        they may not even take."""
        if not self.sources or not layout.prepared.is_dir():
            return
        if difference := dataset_difference(self.reference.engine.prepared, Prepared.open(layout.prepared)):
            raise SourceError(
                f"{name}: its dataset differs from {self.reference.name}'s ({difference}); sources compared side by "
                "side need the same prepared images"
            )

    def remove(self, name: str) -> None:
        """Stop serving a source (the last one stays)."""
        if name not in self.sources:
            raise InvalidQuery(f"unknown source {name!r}; this server has {', '.join(self.sources)}")
        if len(self.sources) == 1:
            raise InvalidQuery(f"{name} is the only source; add another before removing it")
        self.sources = {key: source for key, source in self.sources.items() if key != name}

    # -- what the page shows -------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """``/api/info``: the reference's description, then every source with its metrics and its differences."""
        reference = self.reference
        return {
            **reference.engine.description,
            "sources": [source.describe(reference) for source in self.sources.values()],
            "failed": [{"name": name, "error": error} for name, error in self.failures.items()],
        }

    def map_points(self, source: str, model: str, method: str) -> list[dict]:
        """The cluster stage's 2-D map of a source's model: x, y, class and id of each sampled test image."""
        chosen = self._source(source)
        if method not in chosen.maps.get(model, []):
            raise UnknownImage(f"{source} has no {method} map of {model!r} (cluster.method names the maps drawn)")
        return json.loads(chosen.layout.plot("cluster", method, f"{model}.json").read_text())

    # -- queries ---------------------------------------------------------------------------------------------------
    def check(self, models: str | None, k: int | None, sources: str | None = None) -> tuple[list[Row], int]:
        """The request's rows: each chosen source × each chosen model it has (defaults: all), and the depth."""
        chosen_sources = [s for s in (sources or "").split(",") if s] or list(self.sources)
        for name in chosen_sources:
            self._source(name)
        wanted = [m for m in (models or "").split(",") if m]
        known = dict.fromkeys(m for s in chosen_sources for m in self.sources[s].engine.models)
        for model in wanted:
            if model not in known:
                raise InvalidQuery(f"unknown model {model!r}; this server has {', '.join(known)}")
        rows = [(s, m) for m in (wanted or known) for s in chosen_sources if m in self.sources[s].engine.models]
        _, k = self.reference.engine.check(None, k)
        return rows, k

    def _source(self, name: str) -> Source:
        if name not in self.sources:
            raise InvalidQuery(f"unknown source {name!r}; this server has {', '.join(self.sources)}")
        return self.sources[name]

    def load_upload(self, data: bytes) -> tuple[np.ndarray, list[int]]:
        """Decode an upload at the prepared size (the same for every source)."""
        return self.reference.engine.load_upload(data)

    def search_uploads(self, queries: list[tuple[np.ndarray, list[Row], int]]) -> list[dict[Row, list[dict]]]:
        """Answer a batch of uploads: per source, each needed backbone runs once over the batch."""
        answers: list[dict[Row, list[dict]]] = [{} for _ in queries]
        for name, source in self.sources.items():
            asked = [(i, [m for s, m in rows if s == name]) for i, (_, rows, _) in enumerate(queries)]
            asked = [(i, models) for i, models in asked if models]
            if not asked:
                continue
            found = source.engine.search_uploads([(queries[i][0], models, queries[i][2]) for i, models in asked])
            for (i, _), answer in zip(asked, found, strict=True):
                answers[i] |= {(name, model): hits for model, hits in answer.items()}
        return [{row: answer[row] for row in rows} for answer, (_, rows, _) in zip(answers, queries, strict=True)]

    def search_id(self, image_id: str, rows: list[Row], k: int) -> dict[Row, list[dict]]:
        """Query with a dataset image by id in every row: each source's stored embedding, itself left out."""
        answer: dict[Row, list[dict]] = {}
        for name in dict.fromkeys(s for s, _ in rows):
            models = [m for s, m in rows if s == name]
            found = self.sources[name].engine.search_id(image_id, models, k)
            answer |= {(name, model): hits for model, hits in found.items()}
        return {row: answer[row] for row in rows}

    def gallery_size(self, row: Row) -> int:
        """How many images a row ranks."""
        return len(self.sources[row[0]].engine.galleries[row[1]])
