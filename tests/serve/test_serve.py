"""`embedlab serve` as a user runs it: a real server process on 127.0.0.1 over the tiny pipeline's outputs, its
JSON API, every bad input, a burst of 200 concurrent queries, and the web page in headless Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import EmbeddingSet

from ..conftest import REPO, chromium_page, run

pytestmark = pytest.mark.slow


@contextmanager
def running_server(root: Path, log: Path, *args: str) -> Iterator[str]:
    """Start ``embedlab serve --port 0`` in ``root``; yield its URL (as printed); stop it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedlab.cli", "serve", "--port", "0", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        url = None
        for line in process.stdout:  # the server prints its URL once everything is loaded and the port bound
            if line.startswith("open http://"):
                url = line.split()[1].rstrip("/")
                break
        assert url, f"the server exited ({process.wait()}) before printing its URL:\n{log.read_text()}"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(pipeline, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def prepared(pipeline: Path) -> Prepared:
    return Prepared.open(pipeline / "data" / "prepared")


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(out, "PNG")
    return out.getvalue()


def upload(url: str, data: bytes, **params: object) -> requests.Response:
    return requests.post(f"{url}/api/search", params=params, files={"image": ("query.png", data)}, timeout=120)


def test_info_names_models_galleries_and_the_files_they_came_from(server: str, pipeline: Path) -> None:
    info = requests.get(f"{server}/api/info", timeout=30).json()
    assert [m["name"] for m in info["models"]] == ["mobilenetv2", "smallnet", "stack"]
    assert all(m["gallery"] == 80 and m["index"] == "exact" and m["in_dvc_lock"] is True for m in info["models"])
    assert info["params_md5"] == hashlib.md5((pipeline / "params.yaml").read_bytes()).hexdigest()
    assert info["image_size"] == 32 and len(info["classes"]) == 10
    assert requests.get(f"{server}/api/health", timeout=30).json()["status"] == "ok"


def test_an_uploaded_dataset_image_finds_itself_and_agrees_with_search(
    server: str, pipeline: Path, prepared: Prepared
) -> None:
    row = int(prepared.split("test")[0])
    image_id = prepared.index["id"][row]
    answer = upload(server, png_of(prepared.images[row]), k=5).json()
    assert [r["model"] for r in answer["results"]] == ["mobilenetv2", "smallnet", "stack"]
    for result in answer["results"]:
        top = result["hits"][0]
        assert top["id"] == image_id and top["score"] > 0.999, result  # the same pixels, the same embedding
        assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    query = pipeline / "query.png"
    query.write_bytes(png_of(prepared.images[row]))
    cli = run([sys.executable, "-m", "embedlab.cli", "search", str(query), "--model", "stack", "--json"], pipeline)
    expected = json.loads(cli.stdout)[0]["results"]
    served = next(r["hits"] for r in answer["results"] if r["model"] == "stack")
    assert [h["id"] for h in served] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in served], [h["score"] for h in expected], atol=1e-4)


def test_a_query_by_id_ranks_like_exact_search_and_leaves_itself_out(server: str, pipeline: Path) -> None:
    emb = EmbeddingSet.load(pipeline / "data" / "embeddings" / "mobilenetv2.npz")
    row = 7
    answer = requests.get(
        f"{server}/api/search", params={"id": emb.ids[row], "k": 6, "models": "mobilenetv2"}, timeout=60
    ).json()
    assert answer["query"]["id"] == emb.ids[row] and answer["query"]["class"] == str(emb.class_names[emb.labels[row]])
    scores = emb.embeddings @ emb.embeddings[row]
    scores[row] = -np.inf
    expected = np.argsort(-scores, kind="stable")[:6]
    hits = answer["results"][0]["hits"]
    assert [h["id"] for h in hits] == list(emb.ids[expected])
    np.testing.assert_allclose([h["score"] for h in hits], scores[expected], atol=1e-5)


@pytest.mark.browser
def test_the_api_docs_page_loads_nothing_from_another_host(server: str) -> None:
    html = requests.get(f"{server}/api/docs", timeout=30).text
    linked = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert len(linked) >= 3 and all(url.startswith("/api/") for url in linked), linked
    for url in linked:
        assert requests.get(f"{server}{url}", timeout=30).status_code == 200, url


def test_images_and_thumbnails_are_the_prepared_pixels(server: str, prepared: Prepared) -> None:
    image_id = prepared.index["id"][3]
    full = Image.open(io.BytesIO(requests.get(f"{server}/api/images/{image_id}", timeout=30).content))
    np.testing.assert_array_equal(np.asarray(full), prepared.images[3])
    thumb = requests.get(f"{server}/api/thumbnails/{image_id}", timeout=30)
    assert thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (96, 96)
    assert requests.get(f"{server}/api/thumbnails/no/such/image", timeout=30).status_code == 404


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server: str, prepared: Prepared) -> None:
    good = png_of(prepared.images[0])
    bomb = io.BytesIO()
    Image.new("L", (7000, 6000)).save(bomb, "PNG")  # ~40 KB compressed, 42 million pixels decoded
    cases = {
        "not an image": (upload(server, b"%PDF-1.4 definitely not a picture"), 415, "not an image"),
        "truncated": (upload(server, good[: len(good) // 2]), 400, "truncated"),
        "empty": (upload(server, b""), 400, "empty"),
        "over the byte limit": (upload(server, b"\0" * (11 * 2**20)), 413, "serve.max_upload_mb"),
        "over the pixel limit": (upload(server, bomb.getvalue()), 413, "serve.max_image_pixels"),
        "unknown model": (upload(server, good, models="alexnet"), 400, "unknown model 'alexnet'"),
        "k too large": (upload(server, good, k=5000), 400, "serve.max_k"),
        "unknown id": (requests.get(f"{server}/api/search", params={"id": "nope"}, timeout=30), 404, "nope"),
        "no file": (requests.post(f"{server}/api/search", timeout=30), 422, ""),
    }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, list) or (words in detail and "\n" not in detail), (name, detail)
    assert requests.get(f"{server}/api/health", timeout=30).json()["status"] == "ok"
    assert upload(server, good).status_code == 200  # still serving


def test_200_concurrent_queries_all_answered_none_mixed_up(server: str, prepared: Prepared) -> None:
    rows = [i % len(prepared.index) for i in range(200)]
    before = requests.get(f"{server}/api/health", timeout=30).json()

    def query(row: int) -> tuple[int, dict]:
        response = upload(server, png_of(prepared.images[row]), k=1, models="mobilenetv2")
        return response.status_code, response.json()

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(query, rows))
    assert [status for status, _ in answers] == [200] * 200, [a for s, a in answers if s != 200][:3]
    found = [answer["results"][0]["hits"][0]["id"] for _, answer in answers]
    assert found == [prepared.index["id"][row] for row in rows]  # each answer is its own query's
    after = requests.get(f"{server}/api/health", timeout=30).json()
    assert after["batched_queries"] - before["batched_queries"] == 200
    assert after["batches"] - before["batches"] < 200  # queries that arrived together were embedded together
    assert max(answer["batch"] for _, answer in answers) > 1


def _root_with(pipeline: Path, root: Path, **serve: object) -> Path:
    """The pipeline's outputs under another params.yaml (links, not copies)."""
    root.mkdir()
    for name in ("data", "models", "dvc.lock"):
        (root / name).symlink_to(pipeline / name)
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params.setdefault("serve", {}).update(serve)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_a_burst_over_capacity_gets_429_and_the_rest_are_answered(
    pipeline: Path, prepared: Prepared, tmp_path: Path
) -> None:
    root = _root_with(pipeline, tmp_path / "root", max_pending=2, max_batch=1)
    with running_server(root, tmp_path / "server.log", "--models", "mobilenetv2") as url:
        data = png_of(prepared.images[0])
        with ThreadPoolExecutor(40) as pool:
            responses = list(pool.map(lambda _: upload(url, data, k=1), range(40)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 429}, statuses
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["Retry-After"] == "1" and "serve.max_pending" in busy.json()["detail"]
        health = requests.get(f"{url}/api/health", timeout=30).json()
        assert health["rejected_busy"] == statuses.count(429) and health["pending"] == 0
        assert upload(url, data).status_code == 200


def test_a_mixed_burst_answers_each_query_with_its_own_k_and_models(
    pipeline: Path, prepared: Prepared, tmp_path: Path
) -> None:
    """Uploads with different k and model lists share batches (at most serve.max_batch each); every answer holds
    exactly its own models, in its order, k hits each, ranked as the same query sent alone."""
    root = _root_with(pipeline, tmp_path / "root", max_batch=4)
    choices = [(1, "mobilenetv2"), (3, "stack"), (7, "stack,mobilenetv2"), (2, None)]
    rows = [int(row) for row in prepared.split("test")[:5]]
    queries = [(rows[i % len(rows)], *choices[i % len(choices)]) for i in range(60)]

    def ask(url: str, query: tuple[int, int, str | None]) -> tuple[int, dict]:
        row, k, models = query
        response = upload(url, png_of(prepared.images[row]), k=k, **({"models": models} if models else {}))
        return response.status_code, response.json()

    with running_server(root, tmp_path / "server.log") as url:
        alone = {query: ask(url, query)[1] for query in sorted(set(queries), key=str)}
        with ThreadPoolExecutor(60) as pool:
            answers = list(pool.map(lambda query: ask(url, query), queries))
    assert {answer["batch"] for answer in alone.values()} == {1}
    for (row, k, models), (status, answer) in zip(queries, answers, strict=True):
        assert status == 200, answer
        assert [r["model"] for r in answer["results"]] == (
            models.split(",") if models else ["mobilenetv2", "smallnet", "stack"]
        )
        for result, single in zip(answer["results"], alone[row, k, models]["results"], strict=True):
            assert len(result["hits"]) == k and result["hits"][0]["id"] == prepared.index["id"][row]
            assert [h["id"] for h in result["hits"]] == [h["id"] for h in single["hits"]]
    batches = [answer["batch"] for _, answer in answers]
    assert 1 < max(batches) <= 4, batches


@contextmanager
def server_in_this_process(engine) -> Iterator[str]:
    """The app over ``engine`` (a Comparison) served by uvicorn on 127.0.0.1 from a thread of this process (so a test
    can reach into the engine); yield its URL."""
    import threading

    import uvicorn

    from embedlab.serve.app import create_app

    config = uvicorn.Config(
        create_app(engine), host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server thread ended before it started serving"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_an_engine_fault_answers_its_batch_with_500_and_the_server_goes_on(
    pipeline: Path, prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the engine (here: any batch holding a k=3 query raises) fails the requests of that batch with
    500 and no other; the batching loop keeps serving."""
    from embedlab.serve.comparison import Comparison

    engine = Comparison.load(pipeline, ["workspace"], ["mobilenetv2"], None)
    search, failed_batches = engine.search_uploads, []

    def faulty(queries: list) -> list:
        if any(k == 3 for _, _, k in queries):
            failed_batches.append(len(queries))
            raise RuntimeError("a bug in the engine")
        return search(queries)

    monkeypatch.setattr(engine, "search_uploads", faulty)
    data = png_of(prepared.images[0])
    with server_in_this_process(engine) as url:

        def ask(k: int) -> int | str:
            try:
                return requests.post(f"{url}/api/search", params={"k": k}, files={"image": ("q.png", data)},
                                     timeout=30).status_code  # fmt: skip
            except requests.Timeout:
                return "no answer"

        ks = [3 if i % 4 == 0 else 1 for i in range(24)]
        with ThreadPoolExecutor(24) as pool:
            statuses = list(pool.map(ask, ks))
        assert all(status == 500 for status, k in zip(statuses, ks, strict=True) if k == 3), statuses
        assert set(statuses) <= {200, 500} and statuses.count(500) == sum(failed_batches), (statuses, failed_batches)
        assert [ask(1), ask(3), ask(2)] == [200, 500, 200]  # still serving after every fault
        health = requests.get(f"{url}/api/health", timeout=30).json()
        assert health["pending"] == 0 and health["batched_queries"] == statuses.count(200) + 2


def test_serve_errors_are_one_line(pipeline: Path, tmp_path: Path) -> None:
    def serve(root: Path, *args: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "embedlab.cli", "serve", *args], root, check=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(pipeline / "params.yaml", empty / "params.yaml")
    missing = serve(empty)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {Path('data/prepared')} is missing: run `dvc repro preprocess` "
        "(or `dvc pull preprocess` to fetch it from the remote)"
    )
    unknown = serve(pipeline, "--models", "alexnet")
    assert unknown.stderr.strip().splitlines()[-1] == (
        "error: --models alexnet: not a model of this pipeline; choose from mobilenetv2, smallnet, stack"
    )


@pytest.mark.browser
def test_the_page_shows_every_model_side_by_side_in_chromium(server: str, prepared: Prepared, tmp_path: Path) -> None:
    row = int(prepared.split("test")[1])
    query = tmp_path / "query.png"
    query.write_bytes(png_of(prepared.images[row]))
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with chromium_page(server, 1200, 700) as (context, page, failed):
        page.wait_for_function("document.querySelectorAll('#models input').length === 3")
        page.set_input_files("#file", str(query))  # the file picker, as a user would
        page.wait_for_function(
            "document.querySelectorAll('.model-row').length === 3 && [...document.querySelectorAll('.hit img')]"
            ".every(img => img.complete && img.naturalWidth === 96)"
        )
        rows = page.query_selector_all(".model-row")
        assert [r.get_attribute("data-model") for r in rows] == ["mobilenetv2", "smallnet", "stack"]
        assert all(len(r.query_selector_all("figure.hit")) == 8 for r in rows)
        first = rows[0].query_selector("figure.hit")
        assert first.get_attribute("title").startswith(prepared.index["id"][row])  # itself, the best match
        assert first.query_selector("figcaption b").inner_text() == "1.000"
        shot = artifacts / "serve.png"
        page.screenshot(path=str(shot))
        boxes = [r.bounding_box() for r in rows]
        # Clicking a result queries with it: the query panel now shows that image's id.
        clicked = rows[0].query_selector_all("figure.hit")[2].get_attribute("title").split("\n")[0]
        rows[0].query_selector_all("figure.hit")[2].click()
        page.wait_for_function(f"document.getElementById('query-caption').textContent === {json.dumps(clicked)}")
        page.wait_for_function("document.querySelectorAll('.model-row').length === 3")
        assert page.inner_text("#error") == ""
        docs = context.new_page()  # the API docs draw offline: their scripts come from the server
        docs.goto(f"{server}/api/docs")
        docs.wait_for_selector(".swagger-ui .info .title")
        assert docs.inner_text(".swagger-ui .info .title").startswith("embedlab")
        page.wait_for_load_state("networkidle")
    assert not failed, failed  # everything the page loads is served by embedlab, and loads
    picture = np.asarray(Image.open(shot).convert("L"), np.float32)
    for box in boxes:  # each row is drawn: its thumbnails make the band far from a flat colour
        band = picture[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
        assert band.size and band.std() > 20, box


@pytest.mark.browser
def test_the_page_names_a_model_the_evaluate_stage_found_unhealthy(
    pipeline: Path, prepared: Prepared, tmp_path: Path
) -> None:
    """A model whose metrics say ``collapsed`` carries that word on its row; one whose metrics say ``ok`` carries
    none (the verdicts written over the tiny pipeline's own, which vary with its few images)."""
    root = _root_with(pipeline, tmp_path / "root")
    shutil.copytree(pipeline / "metrics", root / "metrics")
    for model, verdict in {"mobilenetv2": "collapsed", "smallnet": "ok"}.items():
        metrics = root / "metrics" / "retrieval" / f"{model}.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "health": verdict}))
    server = running_server(root, tmp_path / "server.log", "--models", "mobilenetv2", "smallnet")
    with server as url, chromium_page(url, 1200, 700) as (_, page, failed):
        page.wait_for_function("document.querySelectorAll('#models input').length === 2")
        page.click("#random")
        page.wait_for_function("document.querySelectorAll('.model-row').length === 2")
        badges = {
            row.get_attribute("data-model"): [badge.inner_text() for badge in row.query_selector_all(".health")]
            for row in page.query_selector_all(".model-row")
        }
        assert badges == {"mobilenetv2": ["⚠ collapsed"], "smallnet": []}, badges
        assert "ranking" in page.get_attribute(".model-row[data-model=mobilenetv2] .health", "title")
    assert not failed, failed
