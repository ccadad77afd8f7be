"""Answering queries from the pipeline's outputs: embed query images exactly as the embed stage did, then rank a
model's gallery. Shared by ``embedlab search`` (one process per call) and ``embedlab serve`` (loaded once).

Query images go through each backbone in one compiled forward pass (a ``tf.function`` traced once for any batch
size) rather than Keras' ``predict`` loop, whose per-call set-up costs tens of milliseconds: for a handful of
images that set-up, not the network, would be the latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from weakref import WeakValueDictionary

import numpy as np

from embedlab.augment.test_time import TestTimeViews
from embedlab.core.errors import UserError, require_output
from embedlab.core.files import md5sum
from embedlab.core.layout import STACK, Layout
from embedlab.core.params import FaissParams
from embedlab.core.runtime import forward_batch_size
from embedlab.embed.embeddings import EmbeddingSet, embedding_views, l2_normalize, producing_stage
from embedlab.retrieval.index import build_index, search

QUERY_CHUNK = 256  # query images per forward pass at most: bounds memory for long query lists


def _inference(model, images):
    """A Keras model's forward pass in inference mode."""
    return model(images, training=False)


class LoadedBackbone:
    """A trained backbone ready to embed: its compiled forward pass and its embedding width."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        from embedlab.models.io import load_embedding_model

        model = load_embedding_model(path)
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8)
        # A partial, not a lambda: TensorFlow counts traces per code object, and one lambda for many models
        # (several sources) reads to it as a function retraced on every call.
        self.forward = tf.function(partial(_inference, model), input_signature=[spec])
        self.width = int(model.output_shape[-1])


# One loaded backbone per distinct model file, by content, while some embedder uses it: revisions that share a
# trained model (an experiment that retrained another backbone) share its weights and its traced graph.
_LOADED: WeakValueDictionary[str, LoadedBackbone] = WeakValueDictionary()


def load_backbone(path: Path, stage: str) -> LoadedBackbone:
    """The backbone saved at ``path`` (made by ``stage``), loaded once per process for the same file content."""
    key = md5sum(require_output(path, stage))
    loaded = _LOADED.get(key)
    if loaded is None:
        loaded = _LOADED[key] = LoadedBackbone(path)
    return loaded


class QueryEmbedder:
    """The trained backbones a set of models needs (the stack needs all of its base backbones) and the stacker,
    loaded once; embeds uint8 images of the prepared size the way ``embed`` did (from the same ``views``)."""

    def __init__(self, layout: Layout, models: list[str], views: TestTimeViews) -> None:
        from embedlab.stack.stacker import Stacker

        self.views = views
        self.stacker = Stacker.load(require_output(layout.stacker, STACK)) if STACK in models else None
        needed = [m for m in models if m != STACK] + (self.stacker.backbones if self.stacker else [])
        self.loaded = {name: load_backbone(layout.model(name), f"train@{name}") for name in dict.fromkeys(needed)}
        self.forward = {name: loaded.forward for name, loaded in self.loaded.items()}
        self.width = {name: loaded.width for name, loaded in self.loaded.items()}

    def backbone(self, name: str, images: np.ndarray) -> np.ndarray:
        """One backbone's embeddings of ``images`` (uint8, ``(n, S, S, 3)``), in chunks whose views together keep to
        the forward pixel budget (:func:`~embedlab.core.runtime.forward_batch_size`): six views of 256 queries at
        224 px would otherwise be one 1,536-image pass."""
        views = len(self.views.views)
        chunk = max(1, forward_batch_size(QUERY_CHUNK * views, images.shape[1]) // views)
        out = []
        for start in range(0, len(images), chunk):
            batch = np.ascontiguousarray(images[start : start + chunk])
            if self.views.plain:
                out.append(np.asarray(self.forward[name](batch), np.float32))
            else:  # every view in one pass; the weighted mean's direction, as embed does
                outputs = np.asarray(self.forward[name](np.concatenate([view(batch) for view in self.views.views])))
                out.append(l2_normalize(self.views.average(np.split(outputs, views))))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed(self, images: np.ndarray, models: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of ``images`` for each model; each backbone runs once even when the stack needs it too, and
        not at all when the stack gives it weight 0 and nothing else asks for it."""
        backbones = [m for m in models if m != STACK] + (self.stacker.contributing if STACK in models else [])
        vectors = {name: self.backbone(name, images) for name in dict.fromkeys(backbones)}
        if STACK in models:
            assert self.stacker is not None, "the stack was not loaded"
            blocks = [
                vectors[name] if name in vectors else np.zeros((len(images), self.width[name]), np.float32)
                for name in self.stacker.backbones
            ]
            vectors[STACK] = self.stacker.transform(blocks)
        return {m: vectors[m] for m in models}


@dataclass
class Hit:
    """One result: its rank (from 1), the gallery image and the score."""

    rank: int
    id: str
    label: int
    class_name: str
    split: str
    score: float

    def as_dict(self) -> dict:
        """The JSON form that ``embedlab search --json`` prints and the server answers."""
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "label": self.label,
            "class": self.class_name,
            "id": self.id,
            "split": self.split,
        }


class Gallery:
    """One model's searchable images: the chosen splits of its embeddings file, searched exactly or by faiss.

    Any embedded image (whatever its split) can be a query by id; a query never finds itself.
    """

    def __init__(
        self,
        model: str,
        layout: Layout,
        splits: str = "all",
        metric: str = "cosine",
        index: str = "exact",
        faiss_params: FaissParams | None = None,
        query_expansion: int = 0,
    ) -> None:
        emb = EmbeddingSet.load(require_output(layout.embeddings(model), producing_stage(model)))
        rows = emb.rows(splits)
        self.model, self.metric, self.splits = model, metric, splits
        self.all = emb
        self.row_of = {image_id: row for row, image_id in enumerate(emb.ids)}
        self.vectors = np.ascontiguousarray(emb.embeddings[rows])
        self.ids, self.labels, self.split_names = emb.ids[rows], emb.labels[rows], emb.splits[rows]
        self.class_names = [str(name) for name in emb.class_names]
        self.index_kind = index
        self.index = build_index(
            self.vectors, metric, kind=index, faiss=faiss_params, gallery_ids=self.ids, query_expansion=query_expansion
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """The embedding width."""
        return int(self.vectors.shape[1])

    def vector_of(self, image_id: str) -> np.ndarray:
        """The stored embedding of any embedded image; ``KeyError`` for an unknown id."""
        return self.all.embeddings[self.row_of[image_id]]

    def top_k(self, queries: np.ndarray, k: int, query_ids: list[str | None] | None = None) -> list[list[Hit]]:
        """The top ``k`` per query, best first; a query given by id is left out of its own results."""
        ids = None
        if query_ids is not None and any(query_ids):
            ids = np.asarray([q or "" for q in query_ids])  # "" (an uploaded image) matches no gallery id
        indices, scores = search(np.asarray(queries, np.float32), self.index, k, query_ids=ids)
        return [self._hits(row, row_scores) for row, row_scores in zip(indices, scores, strict=True)]

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        hits = []
        for i, score in zip(rows, scores, strict=True):
            if np.isfinite(score):  # -inf marks the query itself
                label = int(self.labels[i])
                hits.append(
                    Hit(
                        len(hits) + 1,
                        str(self.ids[i]),
                        label,
                        self.class_names[label],
                        str(self.split_names[i]),
                        float(score),
                    )
                )
        return hits


def search_files(paths: list[str], model: str, k: int, *, layout: Layout, metric: str = "cosine"):
    """``embedlab search``: embed each image file with ``model`` and rank every embedded image.

    Returns the results (one ``{"query", "results"}`` dict per file), the queries' pixels at the prepared size, and
    the prepared images (for a collage). Unreadable files fail before any model is loaded.
    """
    from embedlab.core.params import load_params
    from embedlab.data.images import fit_to_square, open_rgb
    from embedlab.data.prepared import Prepared

    params = load_params(layout.params)
    if model not in params.model_names:
        raise UserError(f"--model {model}: not a model of this pipeline; choose from {', '.join(params.model_names)}")
    prepared = Prepared.open(require_output(layout.prepared, "preprocess"))
    queries = np.stack([fit_to_square(open_rgb(p), prepared.image_size, prepared.fit) for p in paths])
    gallery = Gallery(model, layout, "all", metric, query_expansion=params.evaluate.query_expansion)
    vectors = QueryEmbedder(layout, [model], embedding_views(params.embed)).embed(queries, [model])[model]
    results = [
        {"query": path, "results": [hit.as_dict() for hit in hits]}
        for path, hits in zip(paths, gallery.top_k(vectors, k), strict=True)
    ]
    return results, queries, prepared
