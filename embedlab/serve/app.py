"""``embedlab serve``: the pipeline's models and galleries loaded once, behind a JSON API and a local web page.

It serves one source or several side by side: the working tree and any git revision or DVC experiment
(``--rev``, or the page's picker), each revision's outputs read through DVC (embedlab.serve.sources) and compared
with the first source's (embedlab.serve.comparison).

One worker thread owns TensorFlow and the indexes. Uploads that arrive while it is busy are embedded together as one
batch (dynamic batching), so each backbone runs once per batch and throughput grows with load. Admission control
keeps at most ``serve.max_pending`` queries in the server; the next one gets 429 with ``Retry-After`` instead of
joining an ever longer queue. Bad input (not an image, a corrupt one, one over the size limits, an unknown model or
id) is a 4xx with a one-line ``detail``, and the server goes on serving.
"""

from __future__ import annotations

import socket
import sys
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from embedlab.core.errors import UserError
from embedlab.serve.batching import Batcher
from embedlab.serve.comparison import Comparison, Row
from embedlab.serve.engine import InvalidQuery, NotAnImage, QueryError, UnknownImage, UploadTooLarge
from embedlab.serve.sources import SourceError, UnknownRevision, list_revisions

# What each refusal of the engine is in HTTP.
STATUS = {InvalidQuery: 400, UnknownImage: 404, UploadTooLarge: 413, NotAnImage: 415}


def create_app(comparison: Comparison) -> FastAPI:
    """The FastAPI application over loaded sources."""
    batcher = Batcher(comparison)
    state = {"pending": 0, "served": 0, "rejected_busy": 0}

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPIOffline(  # the API docs page's scripts are served from here, not a CDN: it works offline
        title="embedlab",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        static_url="/api/docs-static",
    )

    @app.exception_handler(QueryError)
    async def refused(_request: Request, err: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=STATUS[type(err)])

    @app.exception_handler(SourceError)
    async def unavailable(_request: Request, err: SourceError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404 if isinstance(err, UnknownRevision) else 422)

    _add_admission(app, comparison, state)
    _add_search_routes(app, comparison, batcher)
    _add_source_routes(app, comparison, batcher)
    _add_file_routes(app, comparison, batcher, state)
    return app


def _add_admission(app: FastAPI, comparison: Comparison, state: dict[str, int]) -> None:
    """Search requests over the size limit get 413 before the body is read; past ``serve.max_pending`` queries in
    progress, 429 with ``Retry-After`` instead of an ever longer queue."""

    @app.middleware("http")
    async def admission(request: Request, call_next):
        if not request.url.path.startswith("/api/search"):
            return await call_next(request)
        limit = int(comparison.params.max_upload_mb * 2**20) + 2**16  # + room for the multipart envelope
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:  # refused before the body is read
            return JSONResponse(
                {"detail": f"request body is {int(length):,} bytes; the limit is {limit:,} (serve.max_upload_mb)"},
                status_code=413,
            )
        if state["pending"] >= comparison.params.max_pending:
            state["rejected_busy"] += 1
            return JSONResponse(
                {"detail": f"busy: {state['pending']} queries in progress (serve.max_pending); retry shortly"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        state["pending"] += 1
        try:
            response = await call_next(request)
        finally:
            state["pending"] -= 1
        state["served"] += response.status_code == 200
        return response


def _add_search_routes(app: FastAPI, comparison: Comparison, batcher: Batcher) -> None:
    """``POST /api/search`` (an upload) and ``GET /api/search?id=`` (a dataset image): one result row per (source,
    model), each with its source's retrieval metrics and their difference to the first source's."""

    def row(key: Row, hits: list[dict]) -> dict:
        source, model = key
        return {
            "source": source,
            "model": model,
            "gallery": comparison.gallery_size(key),
            "hits": hits,
            "metrics": comparison.sources[source].metrics.get(model, {}),
            "metrics_diff": comparison.sources[source].metrics_diff(comparison.reference, model),
        }

    def answer(results: dict[Row, list[dict]], k: int, started: float, query: dict, batch: int = 1) -> dict:
        return {
            "query": query,
            "k": k,
            "results": [row(key, hits) for key, hits in results.items()],
            "batch": batch,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @app.post("/api/search")
    async def search_upload(
        image: Annotated[UploadFile, File()],
        k: int | None = None,
        models: str | None = None,
        sources: str | None = None,
    ) -> dict:
        """Top-k of each model of each source for an uploaded image (multipart field ``image``)."""
        started = time.perf_counter()
        chosen, k = comparison.check(models, k, sources)
        data = await image.read(int(comparison.params.max_upload_mb * 2**20) + 1)
        pixels, size = await run_in_threadpool(comparison.load_upload, data)
        results, batch = await batcher.search_upload(pixels, chosen, k)
        return answer(results, k, started, {"upload": image.filename, "size": size}, batch)

    @app.get("/api/search")
    async def search_by_id(
        id: str, k: int | None = None, models: str | None = None, sources: str | None = None
    ) -> dict:
        """Top-k of each model of each source for an image of the dataset, given by id (itself left out)."""
        started = time.perf_counter()
        chosen, k = comparison.check(models, k, sources)
        results = await batcher.call(comparison.search_id, id, chosen, k)
        image_class = comparison.reference.engine.class_of(id)
        query = {"id": id, "class": image_class, "thumbnail": f"/api/thumbnails/{quote(id)}"}
        return answer(results, k, started, query)


def _add_source_routes(app: FastAPI, comparison: Comparison, batcher: Batcher) -> None:
    """The picker's revisions, adding and removing a source, and each source's embedding maps."""

    @app.get("/api/revisions")
    async def revisions() -> dict:
        """The working tree, HEAD, branches, tags and DVC experiments, each with whether it is loaded."""
        listed = await run_in_threadpool(list_revisions, comparison.root)
        return {"revisions": [{**r.as_dict(), "loaded": r.name in comparison.sources} for r in listed]}

    @app.post("/api/sources")
    async def add_source(rev: str) -> dict:
        """Load a revision (from the DVC cache, or pulled from the remote) and compare it; answers ``/api/info``."""
        await batcher.call(comparison.add, rev)  # a refusal is this request's answer (4xx with the reason)
        return comparison.describe()

    @app.delete("/api/sources/{name:path}")
    async def remove_source(name: str) -> dict:
        """Stop serving a source; answers ``/api/info``."""
        await batcher.call(comparison.remove, name)
        return comparison.describe()

    @app.get("/api/map")
    async def embedding_map(source: str, model: str, method: str = "tsne") -> dict:
        """The cluster stage's 2-D map of a source's model: one point per sampled test image (x, y, class, id)."""
        points = comparison.map_points(source, model, method)
        return {"source": source, "model": model, "method": method, "points": points}


def _add_file_routes(app: FastAPI, comparison: Comparison, batcher: Batcher, state: dict[str, int]) -> None:
    """The page, the images and thumbnails, ``/api/info``, ``/api/health`` and ``/api/random``."""

    @app.get("/api/info")
    async def info() -> dict:
        """The sources, their models, gallery sizes, index, metrics and params differences, and the hashes of the
        files they came from; the sources that failed to load, each with its reason."""
        return comparison.describe()

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness, and the counters: queries served, refused as busy, batches and the queries they held."""
        return {"status": "ok", **state, "batches": batcher.batches, "batched_queries": batcher.queries}

    @app.get("/api/random")
    async def random_id() -> dict:
        """A random gallery image's id (the page's "random" button)."""
        reference = comparison.reference.engine
        gallery = reference.galleries[reference.models[0]]
        return {"id": str(gallery.ids[np.random.default_rng().integers(len(gallery))])}

    @app.get("/api/images/{image_id:path}")
    async def full_image(image_id: str) -> Response:
        """The prepared image as PNG, at the size the models see."""
        png = await run_in_threadpool(comparison.reference.engine.thumbnail, image_id, None)
        return Response(png, media_type="image/png")

    @app.get("/api/thumbnails/{image_id:path}")
    async def thumbnail(image_id: str) -> Response:
        """The prepared image as a ``serve.thumbnail``-pixel PNG."""
        png = await run_in_threadpool(comparison.reference.engine.thumbnail, image_id, comparison.params.thumbnail)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    page = resources.files("embedlab.serve").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page


def serve(
    root: Path, revisions: list[str], models: list[str] | None, *, host: str, port: int, index: str | None
) -> None:
    """Load every source (a line for each that fails), bind, print the URL, serve until interrupted."""
    import uvicorn

    comparison = Comparison.load(root, revisions, models, index)
    for name, error in comparison.failures.items():
        print(f"embedlab serve: not serving {name}: {error}", file=sys.stderr, flush=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by connections: no 40 ms delayed-ACK stall
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections made as soon as the URL is printed wait in the backlog
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another with --port") from None
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    for source in comparison.sources.values():
        sizes = ", ".join(f"{m} ({len(g):,})" for m, g in source.engine.galleries.items())
        commit = f" ({source.revision.commit[:8]})" if source.revision.commit else ""
        kind = next(iter(source.engine.galleries.values())).index_kind
        print(f"embedlab serve: {source.name}{commit}: {sizes}; index {kind}", flush=True)
    print(f"open http://{shown}:{bound_port}/", flush=True)
    config = uvicorn.Config(create_app(comparison), log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
