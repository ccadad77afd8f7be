"""``embedlab serve``: the pipeline's models and galleries loaded once, behind a JSON API and a local web page.

One worker thread owns TensorFlow and the indexes. Uploads that arrive while it is busy are embedded together as one
batch (dynamic batching), so each backbone runs once per batch and throughput grows with load. Admission control
keeps at most ``serve.max_pending`` queries in the server; the next one gets 429 with ``Retry-After`` instead of
joining an ever longer queue. Bad input (not an image, a corrupt one, one over the size limits, an unknown model or
id) is a 4xx with a one-line ``detail``, and the server goes on serving.
"""

from __future__ import annotations

import socket
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from embedlab.core.errors import UserError
from embedlab.core.layout import Layout
from embedlab.serve.engine import (
    Batcher,
    Engine,
    InvalidQuery,
    NotAnImage,
    QueryError,
    UnknownImage,
    UploadTooLarge,
)

# What each refusal of the engine is in HTTP.
STATUS = {InvalidQuery: 400, UnknownImage: 404, UploadTooLarge: 413, NotAnImage: 415}


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI application over a loaded engine."""
    batcher = Batcher(engine)
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

    _add_admission(app, engine, state)
    _add_search_routes(app, engine, batcher)
    _add_file_routes(app, engine, batcher, state)
    return app


def _add_admission(app: FastAPI, engine: Engine, state: dict[str, int]) -> None:
    """Search requests over the size limit get 413 before the body is read; past ``serve.max_pending`` queries in
    progress, 429 with ``Retry-After`` instead of an ever longer queue."""

    @app.middleware("http")
    async def admission(request: Request, call_next):
        if not request.url.path.startswith("/api/search"):
            return await call_next(request)
        limit = int(engine.params.max_upload_mb * 2**20) + 2**16  # + room for the multipart envelope
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:  # refused before the body is read
            return JSONResponse(
                {"detail": f"request body is {int(length):,} bytes; the limit is {limit:,} (serve.max_upload_mb)"},
                status_code=413,
            )
        if state["pending"] >= engine.params.max_pending:
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


def _add_search_routes(app: FastAPI, engine: Engine, batcher: Batcher) -> None:
    """``POST /api/search`` (an upload) and ``GET /api/search?id=`` (a dataset image)."""

    def answer(results: dict, k: int, started: float, query: dict, batch: int = 1) -> dict:
        return {
            "query": query,
            "k": k,
            "results": [{"model": m, "gallery": len(engine.galleries[m]), "hits": hits} for m, hits in results.items()],
            "batch": batch,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @app.post("/api/search")
    async def search_upload(
        image: Annotated[UploadFile, File()], k: int | None = None, models: str | None = None
    ) -> dict:
        """Top-k of each model for an uploaded image (multipart field ``image``)."""
        started = time.perf_counter()
        chosen, k = engine.check(models, k)
        data = await image.read(int(engine.params.max_upload_mb * 2**20) + 1)
        pixels, size = await run_in_threadpool(engine.load_upload, data)
        results, batch = await batcher.search_upload(pixels, chosen, k)
        return answer(results, k, started, {"upload": image.filename, "size": size}, batch)

    @app.get("/api/search")
    async def search_by_id(id: str, k: int | None = None, models: str | None = None) -> dict:
        """Top-k of each model for an image of the dataset, given by id (itself left out)."""
        started = time.perf_counter()
        chosen, k = engine.check(models, k)
        results = await batcher.call(engine.search_id, id, chosen, k)
        query = {"id": id, "class": engine.class_of(id), "thumbnail": f"/api/thumbnails/{quote(id)}"}
        return answer(results, k, started, query)


def _add_file_routes(app: FastAPI, engine: Engine, batcher: Batcher, state: dict[str, int]) -> None:
    """The page, the images and thumbnails, ``/api/info``, ``/api/health`` and ``/api/random``."""

    @app.get("/api/info")
    async def info() -> dict:
        """Models, gallery sizes, index, and the hashes of the files they came from."""
        return engine.description

    @app.get("/api/health")
    async def health() -> dict:
        """Liveness, and the counters: queries served, refused as busy, batches and the queries they held."""
        return {"status": "ok", **state, "batches": batcher.batches, "batched_queries": batcher.queries}

    @app.get("/api/random")
    async def random_id() -> dict:
        """A random gallery image's id (the page's "random" button)."""
        gallery = engine.galleries[engine.models[0]]
        return {"id": str(gallery.ids[np.random.default_rng().integers(len(gallery))])}

    @app.get("/api/images/{image_id:path}")
    async def full_image(image_id: str) -> Response:
        """The prepared image as PNG, at the size the models see."""
        return Response(await run_in_threadpool(engine.thumbnail, image_id, None), media_type="image/png")

    @app.get("/api/thumbnails/{image_id:path}")
    async def thumbnail(image_id: str) -> Response:
        """The prepared image as a ``serve.thumbnail``-pixel PNG."""
        png = await run_in_threadpool(engine.thumbnail, image_id, engine.params.thumbnail)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    page = resources.files("embedlab.serve").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page


def serve(layout: Layout, models: list[str] | None, *, host: str, port: int, index: str | None) -> None:
    """Load everything, bind, print the URL, serve until interrupted."""
    import uvicorn

    engine = Engine(layout, models, index)
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
    sizes = ", ".join(f"{m} ({len(g):,})" for m, g in engine.galleries.items())
    print(f"embedlab serve: {sizes}; index {next(iter(engine.galleries.values())).index_kind}", flush=True)
    print(f"open http://{shown}:{bound_port}/", flush=True)
    config = uvicorn.Config(create_app(engine), log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
