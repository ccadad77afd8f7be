"""The query engine behind ``embedlab serve`` for one source: its models, galleries and images, loaded once."""

from __future__ import annotations

import io
from functools import lru_cache
from urllib.parse import quote

import numpy as np
import yaml

from embedlab.core.errors import UserError, require_output
from embedlab.core.files import md5sum
from embedlab.core.layout import Layout
from embedlab.core.params import Params, ServeParams, load_params
from embedlab.data.images import ImageDecodeError, decode, fit_to_square
from embedlab.embed.embeddings import embedding_views, producing_stage
from embedlab.serve.query import Gallery, Hit, QueryEmbedder


class QueryError(Exception):
    """A query the engine refuses, with a one-line reason for the client; the HTTP layer maps each kind to a
    status code (embedlab.serve.app)."""


class InvalidQuery(QueryError):
    """An unknown model, a k out of range, an empty, unreadable or corrupt upload."""


class UploadTooLarge(QueryError):
    """The upload's bytes or its decoded pixels exceed ``serve.max_upload_mb`` or ``serve.max_image_pixels``."""


class NotAnImage(QueryError):
    """Pillow cannot identify the upload's format."""


class UnknownImage(QueryError):
    """No embedded image has the id asked for."""


class Engine:
    """Everything a query needs, loaded once: the query embedder, one gallery per model, the prepared images."""

    def __init__(self, layout: Layout, models: list[str] | None = None, index: str | None = None) -> None:
        from embedlab.data.prepared import Prepared

        params = load_params(layout.params)
        self.params: ServeParams = params.serve
        self.models = models or params.model_names
        unknown = [m for m in self.models if m not in params.model_names]
        if unknown:
            raise UserError(
                f"--models {unknown[0]}: not a model of this pipeline; choose from {', '.join(params.model_names)}"
            )
        self.prepared = Prepared.open(require_output(layout.prepared, "preprocess"))
        self.image_size, self.fit = self.prepared.image_size, self.prepared.fit
        self.row_of = {image_id: row for row, image_id in enumerate(self.prepared.index["id"])}
        search = params.evaluate
        index = index or search.index
        self.galleries = {
            m: Gallery(m, layout, self.params.gallery, search.metric, index, search.faiss, search.query_expansion)
            for m in self.models
        }
        self.embedder = QueryEmbedder(layout, self.models, embedding_views(params.embed))
        self.embedder.embed(np.zeros((2, self.image_size, self.image_size, 3), np.uint8), self.models)  # trace now
        self.description = self._describe(layout, params)
        self.thumbnail = lru_cache(maxsize=8192)(self._png)

    def _describe(self, layout: Layout, params: Params) -> dict:
        """``/api/info``: what is loaded, and the hashes that tie it to the pipeline's files."""
        return {
            "models": [
                {
                    "name": m,
                    "gallery": len(g),
                    "dim": g.dim,
                    "index": g.index_kind,
                    "embeddings_md5": md5sum(layout.embeddings(m)),
                    "in_dvc_lock": _in_lock(layout, m),
                }
                for m, g in self.galleries.items()
            ],
            "gallery_splits": self.params.gallery,
            "metric": params.evaluate.metric,
            "flip_average": params.embed.flip_average,
            "translate_average": params.embed.translate_average,
            "image_size": self.image_size,
            "classes": list(self.prepared.class_names),
            "params_md5": md5sum(layout.params),
            "k": self.params.k,
            "max_k": self.params.max_k,
            "max_upload_mb": self.params.max_upload_mb,
        }

    def check(self, models: str | None, k: int | None) -> tuple[list[str], int]:
        """The request's models (comma-separated; default all loaded) and depth, or :class:`InvalidQuery` naming what is
        wrong."""
        chosen = [m for m in (models or "").split(",") if m] or self.models
        for m in chosen:
            if m not in self.galleries:
                raise InvalidQuery(f"unknown model {m!r}; this server has {', '.join(self.models)}")
        k = self.params.k if k is None else k
        if not 1 <= k <= self.params.max_k:
            raise InvalidQuery(f"k must be between 1 and {self.params.max_k} (serve.max_k), got {k}")
        return chosen, k

    def load_upload(self, data: bytes) -> tuple[np.ndarray, list[int]]:
        """Decode an uploaded file into a prepared-size image, or raise the :class:`QueryError` that says why not."""
        from PIL import Image, UnidentifiedImageError

        limit = int(self.params.max_upload_mb * 2**20)
        if len(data) > limit:
            raise UploadTooLarge(f"upload is {len(data):,} bytes; the limit is {limit:,} (serve.max_upload_mb)")
        if not data:
            raise InvalidQuery("the upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the header only: size before decoding
                size = list(header.size)
        except UnidentifiedImageError:
            raise NotAnImage("not an image: Pillow cannot identify the file's format") from None
        except Exception as err:
            raise InvalidQuery(f"unreadable image ({type(err).__name__}: {err})") from None
        if size[0] * size[1] > self.params.max_image_pixels:
            raise UploadTooLarge(
                f"image is {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels; the limit is "
                f"{self.params.max_image_pixels:,} (serve.max_image_pixels)",
            )
        try:
            image = decode(data)
        except ImageDecodeError as err:
            raise InvalidQuery(f"corrupt or truncated image ({err})") from None
        return fit_to_square(image, self.image_size, self.fit), size

    def search_uploads(self, queries: list[tuple[np.ndarray, list[str], int]]) -> list[dict[str, list[dict]]]:
        """Answer a batch of uploads: each needed backbone runs once over the whole batch."""
        needed = list(dict.fromkeys(m for _, models, _ in queries for m in models))
        vectors = self.embedder.embed(np.stack([image for image, _, _ in queries]), needed)
        answers: list[dict[str, list[dict]]] = [{} for _ in queries]
        for model in needed:
            rows = [i for i, (_, models, _) in enumerate(queries) if model in models]
            depth = max(queries[i][2] for i in rows)
            for i, hits in zip(rows, self.galleries[model].top_k(vectors[model][rows], depth), strict=True):
                answers[i][model] = [self._hit(h) for h in hits[: queries[i][2]]]
        return [{m: answer[m] for m in models} for answer, (_, models, _) in zip(answers, queries, strict=True)]

    def search_id(self, image_id: str, models: list[str], k: int) -> dict[str, list[dict]]:
        """Query with an image of the dataset by id: its stored embeddings, itself left out of the results."""
        if image_id not in self.row_of:
            raise UnknownImage(f"unknown image id {image_id!r}")
        answer = {}
        for model in models:
            gallery = self.galleries[model]
            hits = gallery.top_k(gallery.vector_of(image_id)[None, :], k, query_ids=[image_id])[0]
            answer[model] = [self._hit(h) for h in hits]
        return answer

    def _hit(self, hit: Hit) -> dict:
        quoted = quote(hit.id)
        return {**hit.as_dict(), "thumbnail": f"/api/thumbnails/{quoted}", "image": f"/api/images/{quoted}"}

    def class_of(self, image_id: str) -> str:
        """The class name of a dataset image."""
        return str(self.prepared.class_names[self.prepared.labels[self.row_of[image_id]]])

    def image_of(self, image_id: str) -> np.ndarray:
        """A dataset image's prepared pixels, or a 404."""
        if image_id not in self.row_of:
            raise UnknownImage(f"unknown image id {image_id!r}")
        return np.asarray(self.prepared.images[self.row_of[image_id]])

    def _png(self, image_id: str, side: int | None) -> bytes:
        from PIL import Image

        image = Image.fromarray(self.image_of(image_id))
        if side is not None and side != image.width:  # nearest keeps small images' pixels crisp when enlarged
            image = image.resize((side, side), Image.Resampling.NEAREST if side > image.width else Image.BICUBIC)
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()


def _in_lock(layout: Layout, model: str) -> bool | None:
    """Whether the model's embeddings file is the one ``dvc.lock`` records (None: no lock or no entry)."""
    if not layout.lock.exists():
        return None
    outs = (yaml.safe_load(layout.lock.read_text()).get("stages", {}).get(producing_stage(model)) or {}).get("outs", [])
    path = Layout().embeddings(model).as_posix()  # dvc.lock records paths relative to the repository root
    recorded = [out.get("md5") for out in outs if out.get("path") == path]
    return recorded[0] == md5sum(layout.embeddings(model)) if recorded else None
