"""`embedlab serve --rev`: revisions and DVC experiments side by side, as a user runs it. A copy of the tiny pipeline
gets a real experiment whose outputs live only on a local remote (so start-up pulls them), a branch with another
dataset and a commit without outputs; a real server process answers the API and headless Chromium drives the page."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import EmbeddingSet
from embedlab.serve.sources import SCRATCH

from ..conftest import REPO, chromium_page, dvc, run, set_params
from .test_serve import png_of, running_server, upload

pytestmark = pytest.mark.slow

EXPERIMENT = "more-epochs"
MODELS = ["mobilenetv2", "smallnet", "stack"]


@dataclass
class Revisions:
    repo: Path
    remote: Path
    commit: str  # the experiment's


def git_show(repo: Path, commit: str, path: str) -> str:
    return run(["git", "show", f"{commit}:{path}"], repo).stdout


def cached(repo: Path, md5: str) -> bool:
    return (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()


def lock_md5(lock: str, stage: str, path: str) -> str:
    outs = yaml.safe_load(lock)["stages"][stage]["outs"]
    return next(out["md5"] for out in outs if out["path"] == path)


@pytest.fixture(scope="module")
def revisions(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Revisions:
    """The tiny pipeline's repo with: HEAD (its run, in the cache); the experiment ``more-epochs`` (smallnet 3 epochs
    instead of 2), pushed to a local remote and then dropped from the cache; the branch ``resized`` (images of 24 px:
    another dataset); and HEAD~1, the copy before any run (no outputs)."""
    root = tmp_path_factory.mktemp("compare")
    repo, remote = root / "repo", root / "remote"
    shutil.copytree(pipeline, repo, symlinks=True)
    dvc("remote", "add", "--local", "--default", "local", str(remote), cwd=repo)
    dvc("exp", "run", "--name", EXPERIMENT, "--set-param", "backbones.smallnet.epochs=3", cwd=repo)
    dvc("push", cwd=repo)  # the workspace holds the experiment's outputs
    run(["git", "checkout", "--", "."], repo)
    dvc("checkout", "--force", cwd=repo)
    dvc("gc", "--workspace", "--force", cwd=repo)  # keeps HEAD's objects only: the experiment's are on the remote
    run(["git", "checkout", "-q", "-b", "resized"], repo)
    set_params(repo, data__image_size=24)
    dvc("repro", "--single-item", "preprocess", cwd=repo)
    run(["git", "commit", "-qam", "24 px images"], repo)
    run(["git", "checkout", "-q", "-"], repo)
    dvc("checkout", "--force", cwd=repo)
    commit = run(["git", "rev-parse", f"refs/exps/{_exp_ref(repo)}"], repo).stdout.strip()
    return Revisions(repo, remote, commit)


def _exp_ref(repo: Path) -> str:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    return next(ref for ref in refs if ref.endswith(f"/{EXPERIMENT}")).removeprefix("refs/exps/")


@pytest.fixture(scope="module")
def compared(revisions: Revisions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server over HEAD, the experiment, and three revisions it cannot serve; its URL and its stderr log."""
    log = tmp_path_factory.mktemp("compared") / "server.log"
    exp_embeddings = lock_md5(git_show(revisions.repo, revisions.commit, "dvc.lock"), "embed@smallnet",
                              "data/embeddings/smallnet.npz")  # fmt: skip
    assert not cached(revisions.repo, exp_embeddings)  # only on the remote: start-up must pull it
    args = ["--rev", "HEAD", "--rev", EXPERIMENT, "--rev", "HEAD~1", "--rev", "nope", "--rev", "resized"]
    with running_server(revisions.repo, log, *args) as url:
        yield url, log


def test_a_revision_whose_remote_is_unreachable_is_named_and_the_others_served(
    revisions: Revisions, tmp_path: Path
) -> None:
    scratch = revisions.repo / SCRATCH
    shutil.rmtree(scratch / revisions.commit, ignore_errors=True)
    offline = revisions.remote.with_name("remote-offline")
    revisions.remote.rename(offline)
    try:
        with running_server(revisions.repo, tmp_path / "log", "--rev", EXPERIMENT, "--rev", "HEAD") as url:
            info = requests.get(f"{url}/api/info", timeout=30).json()
            assert [s["name"] for s in info["sources"]] == ["HEAD"]
            [failed] = info["failed"]
            assert failed["name"] == EXPERIMENT
            assert failed["error"].startswith(f"{EXPERIMENT}: data/embeddings/") or failed["error"].startswith(
                f"{EXPERIMENT}: models/"
            ), failed
            assert "is neither in the local DVC cache nor on a reachable remote" in failed["error"]
            prepared = Prepared.open(revisions.repo / "data" / "prepared")
            answer = upload(url, png_of(prepared.images[0]), k=2).json()
            assert {r["source"] for r in answer["results"]} == {"HEAD"}
        assert f"embedlab serve: not serving {EXPERIMENT}: {failed['error']}" in (tmp_path / "log").read_text()
    finally:
        offline.rename(revisions.remote)
    leftovers = sorted(p.name for p in scratch.iterdir())  # nothing half-copied: only HEAD's complete copy
    assert leftovers == [run(["git", "rev-parse", "HEAD"], revisions.repo).stdout.strip()], leftovers


def test_info_lists_each_revision_with_its_params_and_metrics_diff(
    compared: tuple[str, Path], revisions: Revisions
) -> None:
    url, log = compared
    info = requests.get(f"{url}/api/info", timeout=30).json()
    head, exp = info["sources"]
    assert (head["name"], head["kind"], exp["name"], exp["kind"]) == ("HEAD", "head", EXPERIMENT, "experiment")
    assert exp["commit"] == revisions.commit
    assert head["params_diff"] == {}
    assert exp["params_diff"] == {"backbones.smallnet.epochs": {"old": 2, "new": 3}}
    lock = git_show(revisions.repo, revisions.commit, "dvc.lock")
    served = {m["name"]: m["embeddings_md5"] for m in exp["models"]}
    assert served["smallnet"] == lock_md5(lock, "embed@smallnet", "data/embeddings/smallnet.npz")  # pulled, intact
    for model in MODELS:
        ours = json.loads(git_show(revisions.repo, revisions.commit, f"metrics/retrieval/{model}.json"))
        theirs = json.loads((revisions.repo / "metrics" / "retrieval" / f"{model}.json").read_text())
        assert exp["metrics"][model] == ours
        figures = [key for key, value in ours.items() if isinstance(value, float)]  # not health, not the protocol
        assert exp["metrics_diff"][model] == pytest.approx({k: ours[k] - theirs[k] for k in figures}, abs=1e-6)
    assert set(exp["metrics_diff"]["mobilenetv2"].values()) == {0.0}  # not retrained
    failed = {f["name"]: f["error"] for f in info["failed"]}
    assert failed["nope"].startswith("unknown revision 'nope': not a commit, branch, tag or `dvc exp list` entry")
    assert failed["HEAD~1"] == "HEAD~1: has no data/prepared (was `dvc repro` run and its dvc.lock committed there?)"
    assert failed["resized"].startswith("resized: its dataset differs from HEAD's (image size 24 ")
    for name, error in failed.items():  # and each is one line of the command's output
        assert f"embedlab serve: not serving {name}: {error}\n" in log.read_text()


def test_one_query_answers_every_revision_with_its_own_model(compared: tuple[str, Path], revisions: Revisions) -> None:
    url, _ = compared
    prepared = Prepared.open(revisions.repo / "data" / "prepared")
    row = int(prepared.split("test")[0])
    image_id = prepared.index["id"][row]
    answer = upload(url, png_of(prepared.images[row]), k=5).json()
    rows = {(r["source"], r["model"]): r for r in answer["results"]}
    assert list(rows) == [(source, model) for model in MODELS for source in ("HEAD", EXPERIMENT)]
    for result in rows.values():
        assert result["hits"][0]["id"] == image_id and result["hits"][0]["score"] > 0.999, result
    scores = {key: [h["score"] for h in r["hits"]] for key, r in rows.items()}
    assert scores["HEAD", "mobilenetv2"] == scores[EXPERIMENT, "mobilenetv2"]  # the same model in both
    assert scores["HEAD", "smallnet"] != scores[EXPERIMENT, "smallnet"]  # the experiment's own smallnet embedded it
    exp_metrics = json.loads(git_show(revisions.repo, revisions.commit, "metrics/retrieval/smallnet.json"))
    assert rows[EXPERIMENT, "smallnet"]["metrics"] == exp_metrics  # each row carries its revision's metrics
    # By id: each revision ranks its own stored embeddings, exactly.
    by_id = requests.get(f"{url}/api/search", params={"id": image_id, "k": 4, "sources": EXPERIMENT,
                                                       "models": "smallnet"}, timeout=30).json()  # fmt: skip
    copy = revisions.repo / SCRATCH / revisions.commit / "data" / "embeddings" / "smallnet.npz"
    emb = EmbeddingSet.load(copy)
    scores_all = emb.embeddings @ emb.embeddings[list(emb.ids).index(image_id)]
    order = [i for i in np.argsort(-scores_all, kind="stable") if emb.ids[i] != image_id][:4]
    [result] = by_id["results"]
    assert [h["id"] for h in result["hits"]] == [str(emb.ids[i]) for i in order]


def test_the_picker_lists_revisions_and_adds_and_removes_a_source(compared: tuple[str, Path]) -> None:
    url, _ = compared
    listed = requests.get(f"{url}/api/revisions", timeout=30).json()["revisions"]
    kinds = {r["name"]: (r["kind"], r["loaded"]) for r in listed}
    assert kinds["workspace"] == ("workspace", False) and kinds["HEAD"] == ("head", True)
    assert kinds["resized"] == ("branch", False) and kinds[EXPERIMENT] == ("experiment", True)
    unknown = requests.post(f"{url}/api/sources", params={"rev": "v9"}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("unknown revision 'v9'")
    other = requests.post(f"{url}/api/sources", params={"rev": "resized"}, timeout=30)
    assert other.status_code == 422 and "its dataset differs from HEAD's" in other.json()["detail"]
    added = requests.post(f"{url}/api/sources", params={"rev": "workspace"}, timeout=120)
    assert added.status_code == 200, added.text
    assert [s["name"] for s in added.json()["sources"]] == ["HEAD", EXPERIMENT, "workspace"]
    removed = requests.delete(f"{url}/api/sources/workspace", timeout=30).json()
    assert [s["name"] for s in removed["sources"]] == ["HEAD", EXPERIMENT]
    assert requests.get(f"{url}/api/health", timeout=30).json()["status"] == "ok"


def test_the_map_is_the_cluster_stage_output_of_that_revision(compared: tuple[str, Path], revisions: Revisions) -> None:
    url, _ = compared
    answer = requests.get(f"{url}/api/map", params={"source": EXPERIMENT, "model": "smallnet"}, timeout=30).json()
    drawn = git_show(revisions.repo, revisions.commit, "plots/cluster/tsne/smallnet.json")
    assert answer["points"] == json.loads(drawn)
    head = requests.get(f"{url}/api/map", params={"source": "HEAD", "model": "smallnet"}, timeout=30).json()
    assert [p["id"] for p in head["points"]] == [p["id"] for p in answer["points"]]  # the same sample of images
    assert head["points"] != answer["points"]  # drawn from each revision's own embeddings
    missing = requests.get(f"{url}/api/map", params={"source": "HEAD", "model": "alexnet"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["detail"] == (
        "HEAD has no tsne map of 'alexnet' (cluster.method names the maps drawn)"
    )


def test_revisions_share_a_backbone_they_both_trained_alike(compared: tuple[str, Path], revisions: Revisions) -> None:
    """The experiment retrained smallnet only: its mobilenetv2 file is HEAD's, so one loaded model serves both.
    (In a process of its own, as the server would be: TensorFlow stays out of this one's captured output.)"""
    code = (
        "import sys; from pathlib import Path; from embedlab.serve.comparison import Comparison; "
        "c = Comparison.load(Path('.'), ['HEAD', sys.argv[1]], None, None); "
        "head, exp = (c.sources[name].engine.embedder.loaded for name in ('HEAD', sys.argv[1])); "
        "print('shared:', head['mobilenetv2'] is exp['mobilenetv2'], head['smallnet'] is exp['smallnet'])"
    )
    printed = run([sys.executable, "-c", code, EXPERIMENT], revisions.repo).stdout.splitlines()[-1]
    assert printed == "shared: True False"


def test_no_source_loaded_is_one_error_line(revisions: Revisions) -> None:
    cmd = [sys.executable, "-m", "embedlab.cli", "serve", "--port", "0", "--rev", "nope", "--rev", "HEAD~1"]
    failed = run(cmd, revisions.repo, check=False)
    assert failed.returncode == 2
    assert (
        failed.stderr.strip().splitlines()[-1].startswith("error: no source could be loaded: unknown revision 'nope'")
    )


@pytest.mark.browser
def test_the_page_compares_revisions_and_its_map_queries_in_chromium(
    compared: tuple[str, Path], revisions: Revisions
) -> None:
    url, _ = compared
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    rows_of = "document.querySelectorAll('.model-row').length"
    with chromium_page(url, 1600, 1000) as (_, page, failed):
        page.wait_for_function("document.querySelectorAll('#map circle').length > 0")
        assert page.inner_text("#failed").count("not loaded:") == 3
        assert "backbones.smallnet.epochs" in page.inner_text("#diffs")
        # The picker: add the working tree as a third source, then take it away again.
        page.select_option("#revisions", "workspace")
        page.click("#add-source")
        page.wait_for_function("document.querySelectorAll('#sources input').length === 3")
        page.wait_for_function("document.querySelectorAll('#map circle').length > 3")
        # Hover a point of the map: its thumbnail shows. Click it: every row finds that image first.
        dot = page.query_selector_all("#map circle")[3]
        clicked = dot.get_attribute("data-id")
        dot.hover()
        page.wait_for_function("(() => { const tip = document.getElementById('map-tip'); const img = tip.querySelector"
                               "('img'); return tip.style.display === 'block' && img.complete && img.naturalWidth > 0;"
                               " })()")  # fmt: skip
        assert clicked in page.inner_text("#map-tip")
        dot.click()
        page.wait_for_function(f"{rows_of} === 9 && document.getElementById('query-caption').textContent === "
                               f"{json.dumps(clicked)}")  # fmt: skip
        rows = page.query_selector_all(".model-row")
        keys = [(r.get_attribute("data-model"), r.get_attribute("data-source")) for r in rows]
        assert keys == [(m, s) for m in MODELS for s in ("HEAD", EXPERIMENT, "workspace")]
        for row in rows:
            first = row.query_selector("figure.hit")
            assert first.get_attribute("title").startswith(clicked + "\n")
            assert first.query_selector("figcaption b").inner_text() == "1.000"
        assert re.search(r"map@5 [0-9.]+ \([+−]", rows[4].inner_text())  # the experiment's smallnet: its diff to HEAD
        page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth)")
        shot = artifacts / "serve-compare.png"
        page.screenshot(path=str(shot), full_page=True)  # the page is not scrolled: boxes are page coordinates
        boxes = [r.bounding_box() for r in rows]
        map_box = page.query_selector("#map").bounding_box()
        # A box over the whole map selects every point.
        page.mouse.move(map_box["x"] + 1, map_box["y"] + 1)
        page.mouse.down()
        page.mouse.move(map_box["x"] + map_box["width"] - 1, map_box["y"] + map_box["height"] - 1, steps=8)
        page.mouse.up()
        circles = len(page.query_selector_all("#map circle"))
        assert len(page.query_selector_all("#selection img")) == circles
        assert page.inner_text("#selection-caption").startswith(f"{circles} images in the box")
        page.click("#sources button.remove >> nth=2")
        page.wait_for_function("document.querySelectorAll('#sources input').length === 2")
        assert page.inner_text("#error") == ""
    assert not failed, failed
    picture = np.asarray(Image.open(shot).convert("L"), np.float32)
    for box in boxes:  # each row is drawn: its thumbnails make the band far from a flat colour
        band = picture[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
        assert band.size and band.std() > 20, box
