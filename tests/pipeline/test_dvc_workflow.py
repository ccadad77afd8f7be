"""The DVC workflow: precise reruns, experiments and queues, remote storage (local and SSH), a reproducible lock."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from embedlab.cluster.clustering import cluster_model
from embedlab.core.layout import RAW_PIXELS
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import raw_pixel_set
from embedlab.retrieval.evaluation import evaluate_model

from ..conftest import REPO, TINY_BACKBONES, copy_repo, dvc, run, set_params


def _copy(pipeline: Path, dest: Path) -> Path:
    """A working copy of the finished tiny pipeline: git history, outputs and cache."""
    shutil.copytree(pipeline, dest, symlinks=True)
    return dest


def _would_run(repo: Path) -> set[str]:
    """Stages whose own deps, params or outs changed (what `dvc status` reports)."""
    return set(json.loads(dvc("status", "--json", cwd=repo).stdout or "{}"))


@pytest.fixture(scope="module")
def scratch(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(pipeline, tmp_path_factory.mktemp("reruns") / "repo")


# (what a user changes, the stages it invalidates). `dvc status` lists the stages whose own deps changed;
# the stages after them rerun when those stages' outputs really change (the experiment tests run that for real).
TRAIN, EMBED = "train@mobilenetv2", "embed@mobilenetv2"  # the tiny pipeline's first backbone
COMBINERS = ["stack", "evaluate", "cluster", "projector"]  # they read every backbone's embeddings


TRAINS = [TRAIN, "train@smallnet"]


PARAM_CHANGES = [
    ({"data__url": "https://mirror.example.org/cifar-10-binary.tar.gz"}, ["download"]),
    ({"data__seed": 7}, ["preprocess", "augment_preview"]),
    ({"data__image_size": 28}, ["preprocess"]),
    ({"augment__rotation": 0.1}, ["augment_preview", *TRAINS]),
    ({"model__embedding_dim": 64}, TRAINS),
    ({"train__dropout": 0.3}, TRAINS),
    ({"train__lr": 1e-4}, TRAINS),
    ({"backbones": {**TINY_BACKBONES, "mobilenetv2": {"epochs": 3}}}, [TRAIN, *COMBINERS]),
    ({"backbones": {**TINY_BACKBONES, "vgg16": None}}, ["train@vgg16", "embed@vgg16", *COMBINERS]),
    ({"embed__flip_average": True}, [EMBED, "embed@smallnet"]),
    ({"stack__method": "concat"}, ["stack"]),
    ({"evaluate__k": 3}, ["evaluate"]),
    ({"evaluate__index": "faiss"}, ["evaluate"]),
    ({"cluster__n_init": 3}, ["cluster"]),
    ({"cluster__tsne__perplexity": 10}, ["cluster"]),
    ({"projector__max_points": 10}, ["projector"]),
]


def test_a_finished_pipeline_has_nothing_to_rerun(scratch: Path) -> None:
    assert _would_run(scratch) == set()
    assert "Data and pipelines are up to date" in dvc("status", cwd=scratch).stdout


@pytest.mark.parametrize(("change", "expected"), PARAM_CHANGES, ids=[str(c) for c, _ in PARAM_CHANGES])
def test_a_param_change_reruns_exactly_its_stages(scratch: Path, change: dict, expected: list[str]) -> None:
    try:
        set_params(scratch, **change)
        assert _would_run(scratch) == set(expected)
    finally:
        run(["git", "checkout", "--", "params.yaml"], scratch)


# File boundaries are rerun boundaries. `test_each_stage_declares_exactly_the_code_it_imports` proves the rule for
# every module statically; these cases prove with real `dvc status` runs that the declared deps act as intended,
# one per kind of module: the foundation, a data module, a stage-private module, a module shared by some stages,
# the training loop, the stacker, and a module no stage uses.
EVERY_STAGE = ["download", "preprocess", "augment_preview", *TRAINS, EMBED, "embed@smallnet", *COMBINERS]


CODE_CHANGES = [
    ("embedlab/core/runtime.py", EVERY_STAGE),  # how TensorFlow runs: every stage, even those that never import it
    ("embedlab/data/download/digits.py", ["download"]),
    ("embedlab/cluster/clustering.py", ["cluster"]),
    ("embedlab/data/sampling.py", [*TRAINS, "cluster", "projector"]),
    ("embedlab/train/loop.py", TRAINS),
    ("embedlab/stack/fit.py", ["stack"]),
    ("embedlab/serve/engine.py", []),
]


@pytest.mark.parametrize(("module", "expected"), CODE_CHANGES, ids=[m for m, _ in CODE_CHANGES])
def test_a_code_change_reruns_exactly_the_stages_that_import_it(
    scratch: Path, module: str, expected: list[str]
) -> None:
    path = scratch / module
    try:
        path.write_text(path.read_text() + "\n# changed\n")
        assert _would_run(scratch) == set(expected)
    finally:
        run(["git", "checkout", "--", module], scratch)


def _imports(path: Path) -> set[str]:
    """embedlab modules a file imports anywhere (top level or inside functions), as repository paths."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports only a type checker sees never run: leave them out
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedlab"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("embedlab")]
        for name in names:
            candidate = REPO / (name.replace(".", "/") + ".py")
            if candidate.exists():
                found.add(str(candidate.relative_to(REPO)))
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                package = REPO.joinpath(*parts[:depth], "__init__.py")
                if package.exists():
                    found.add(str(package.relative_to(REPO)))
    return found


def test_faiss_flat_evaluation_end_to_end_equals_exact_search(pipeline: Path, tmp_path: Path) -> None:
    repo = _copy(pipeline, tmp_path / "repo")
    set_params(repo, evaluate__index="faiss", evaluate__faiss__type="flat")
    dvc("repro", "evaluate", cwd=repo)
    for exact_file in sorted((pipeline / "reports" / "retrieval").glob("*.json")):
        exact = json.loads(exact_file.read_text())
        flat = json.loads((repo / "reports" / "retrieval" / exact_file.name).read_text())
        assert flat.keys() == exact.keys(), exact_file.name  # flat is exhaustive: MAP@R stays
        assert (flat.pop("index"), exact.pop("index")) == ("faiss flat", "exact")
        for key, value in exact.items():
            assert flat[key] == pytest.approx(value, abs=1e-6), (exact_file.name, key)


def code_deps(script: str) -> set[str]:
    """The code deps a stage script needs: the transitive closure of its embedlab imports, with each package folder
    whose every module is in the closure written as the folder (so editing any file in it reruns exactly the stages
    that import it, and a stage's deps read as the parts of the package it uses)."""
    closure, todo = set(), [script]
    while todo:
        for module in _imports(REPO / todo.pop()) - closure:
            closure.add(module)
            todo.append(module)
    folders = {str(Path(m).parent) for m in closure}
    complete = {
        f for f in folders
        if {str(p.relative_to(REPO)) for p in (REPO / f).rglob("*.py") if "__pycache__" not in p.parts} <= closure
    }  # fmt: skip
    outermost = {f for f in complete if not any(f.startswith(g + "/") for g in complete)}
    return {m for m in closure if not any(m.startswith(f + "/") for f in outermost)} | outermost


def test_each_stage_declares_exactly_the_code_it_imports() -> None:
    """dvc.yaml's code deps of every stage are the folders and files its script's embedlab imports reach."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        script = stage["cmd"].split()[1]
        declared = {d for d in stage["deps"] if d.startswith("embedlab/")}
        wanted = code_deps(script)
        assert declared == wanted, f"{name}: missing {sorted(wanted - declared)}, extra {sorted(declared - wanted)}"


def _commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def test_single_experiment_metrics_params_and_plots_diff(pipeline: Path, tmp_path: Path) -> None:
    repo = _copy(pipeline, tmp_path / "repo")
    out = dvc("exp", "run", "-S", "train.lr=1e-4", cwd=repo).stdout
    assert "Running stage 'train@mobilenetv2'" in out and "Running stage 'download'" not in out
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    assert len(experiments) == 1
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["lr"] == 1e-4
    retrieval = data["metrics"]["metrics/retrieval/mobilenetv2.json"]["data"]
    assert 0 <= retrieval["map@5"] <= 1
    table = dvc("exp", "show", "--csv", cwd=repo).stdout.splitlines()[0]
    assert "map@5" in table and "train.lr" in table
    # The workspace holds the experiment's results: diffs against HEAD show what changed.
    lr = json.loads(dvc("params", "diff", "--json", cwd=repo).stdout)["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.001, 0.0001)
    metrics_diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    assert "map@5" in metrics_diff["metrics/retrieval/mobilenetv2.json"]
    dvc("plots", "diff", "HEAD", "-o", str(tmp_path / "diff"), cwd=repo)
    html = (tmp_path / "diff" / "index.html").read_text()
    assert '"rev": "HEAD"' in html and '"rev": "workspace"' in html and "map_at_k" in html


def test_the_daily_verbs_answer_at_a_glance(pipeline: Path, tmp_path: Path) -> None:
    """`dvc metrics show` fits 170 columns with every model's mAP@5, health and protocol; a forced rerun of a train
    stage (which times itself) and of evaluate reproduces the same model and leaves `dvc metrics diff` empty (timings
    are reports, not metrics); `embedlab experiments` shows each experiment's changed params and every model's mAP@5
    in 160 columns."""
    repo = _copy(pipeline, tmp_path / "repo")
    models = ["mobilenetv2", "smallnet", "stack", "raw_pixels"]
    shown = dvc("metrics", "show", cwd=repo).stdout.splitlines()
    assert max(map(len, shown)) <= 170, "\n".join(shown)
    header = shown[0].split()
    for model in models:
        line = next(line for line in shown if line.startswith(f"metrics/retrieval/{model}.json"))
        row = line.replace("below raw pixels", "below-raw-pixels").split()
        assert 0 <= float(row[header.index("map@5")]) <= 1, row
        assert row[header.index("health")] in ("ok", "below-raw-pixels") and "20 test vs 40 train, exact cosine" in line
    # forced one by one; then whatever a changed output would rerun (nothing: the model file came out the same)
    for stage in ("train@smallnet", "evaluate"):
        dvc("repro", "-f", "-s", stage, cwd=repo)
    assert "Stage 'embed@smallnet' didn't change" in dvc("repro", cwd=repo).stdout
    assert dvc("metrics", "diff", cwd=repo).stdout.strip() == ""

    dvc("exp", "run", "--queue", "-n", "euclid", "-S", "evaluate.metric=euclidean", cwd=repo)
    dvc("exp", "run", "--queue", "-n", "concat", "-S", "stack.method=concat", cwd=repo)
    dvc("exp", "run", "--run-all", cwd=repo)
    table = run([sys.executable, "-m", "embedlab.cli", "experiments"], repo).stdout.splitlines()
    assert max(map(len, table)) <= 160, "\n".join(table)
    assert table[0].split() == ["experiment", "evaluate.metric", "stack.method", *models], table[0]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows["euclid"][:2] == ["euclidean", "select"] and rows["concat"][:2] == ["cosine", "concat"]
    for cells in rows.values():
        assert all(0 <= float(value) <= 1 for value in cells[2:]), cells
    # the experiment's own metrics, not the workspace's: concat changed the stack's mAP@5 and nothing else
    baseline = next(cells for name, cells in rows.items() if name not in ("euclid", "concat"))
    assert rows["concat"][2:4] == baseline[2:4] and rows["concat"][5] == baseline[5]


def test_queued_sweep_runs_and_compares(pipeline: Path, tmp_path: Path) -> None:
    repo = _copy(pipeline, tmp_path / "repo")
    dvc("exp", "run", "--queue", "-S", "evaluate.k=3,4", "-S", "evaluate.metric=cosine,euclidean", cwd=repo)
    dvc("exp", "run", "--run-all", cwd=repo)
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    grid = set()
    for experiment in experiments:
        data = experiment["revs"][0]["data"]
        evaluate = data["params"]["params.yaml"]["data"]["evaluate"]
        grid.add((evaluate["k"], evaluate["metric"]))
        assert f"map@{evaluate['k']}" in data["metrics"]["metrics/retrieval/stack.json"]["data"]
    assert grid == {(3, "cosine"), (3, "euclidean"), (4, "cosine"), (4, "euclidean")}


def _lock_md5(repo: Path, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in lock.values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    raise KeyError(path)


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _teammate_story(pipeline: Path, tmp_path: Path, url: str, credentials: list[list[str]]) -> str:
    """Push from one clone, pull only the embeddings into a fresh clone, re-evaluate there without recomputing."""
    origin = _copy(pipeline, tmp_path / "origin")
    dvc("remote", "add", "-d", "store", url, cwd=origin)
    dvc("remote", "modify", "store", "verify", "true", cwd=origin)  # re-hash every pulled object
    for setting in credentials:  # per-machine settings go to .dvc/config.local, never into git
        dvc("remote", "modify", "--local", "store", *setting, cwd=origin)
    _commit_all(origin, "remote storage")
    dvc("push", cwd=origin)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    for setting in credentials:
        dvc("remote", "modify", "--local", "store", *setting, cwd=clone)
    dvc("pull", "embed", "stack", "preprocess", cwd=clone)  # README: "just the embeddings"
    assert (clone / "data" / "embeddings" / "mobilenetv2.npz").exists() and (clone / "data" / "stack").exists()
    assert not (clone / "models" / "mobilenetv2.keras").exists() and not (clone / "data" / "raw").exists()
    out = dvc("exp", "run", "--allow-missing", "-S", "stack.method=concat", "-S", "evaluate.k=3", cwd=clone).stdout
    assert _ran(out) == {"stack", "evaluate", "cluster", "projector"}, out
    assert json.loads((clone / "reports" / "stack.json").read_text())["method"] == "concat"
    assert "map@3" in json.loads((clone / "metrics" / "retrieval" / "stack.json").read_text())
    assert not (clone / "models" / "mobilenetv2.keras").exists()  # nothing was trained
    return _lock_md5(origin, "data/embeddings/mobilenetv2.npz")


def _corrupt_and_pull(tmp_path: Path, object_path: Path) -> None:
    """Damage one pushed object; a fresh clone's pull must fail rather than hand out the damaged file."""
    data = bytearray(object_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    object_path.chmod(0o644)
    object_path.write_bytes(bytes(data))
    clone = tmp_path / "victim"
    run(["git", "clone", "-q", str(tmp_path / "origin"), str(clone)], tmp_path)
    return clone


def test_local_remote_pull_only_embeddings_and_detect_corruption(pipeline: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    md5 = _teammate_story(pipeline, tmp_path, str(remote), [])
    clone = _corrupt_and_pull(tmp_path, remote / "files" / "md5" / md5[:2] / md5[2:])
    pulled = dvc("pull", "embed", cwd=clone, check=False)
    assert pulled.returncode != 0
    assert not (clone / "data" / "embeddings" / "mobilenetv2.npz").exists()


def test_ssh_remote_pull_only_embeddings_and_detect_corruption(pipeline: Path, tmp_path: Path, sshd: dict) -> None:
    store = tmp_path / "ssh-store"
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}{store}"
    credentials = [["keyfile", str(sshd["key"])]]
    md5 = _teammate_story(pipeline, tmp_path, url, credentials)
    assert (store / "files" / "md5" / md5[:2] / md5[2:]).exists()  # the transfer really went through sshd
    clone = _corrupt_and_pull(tmp_path, store / "files" / "md5" / md5[:2] / md5[2:])
    for setting in credentials:
        dvc("remote", "modify", "--local", "store", *setting, cwd=clone)
    pulled = dvc("pull", "embed", cwd=clone, check=False)
    assert pulled.returncode != 0
    assert not (clone / "data" / "embeddings" / "mobilenetv2.npz").exists()


@pytest.mark.slow
def test_a_fresh_copy_reproduces_the_committed_data_hashes(tmp_path: Path) -> None:
    """download and preprocess on the default params give the output hashes committed in dvc.lock, byte for byte,
    and the metrics that depend on them alone come back to 1e-6."""
    repo = copy_repo(tmp_path / "repo")
    shutil.copy(REPO / "dvc.lock", repo / "dvc.lock")
    dvc("repro", "preprocess", cwd=repo)
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    fresh = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("download", "preprocess"):
        assert fresh[stage]["outs"] == committed[stage]["outs"], stage
    counts = json.loads((repo / "reports" / "data.json").read_text())
    assert counts == json.loads((REPO / "reports" / "data.json").read_text())

    # raw_pixels needs no training, so its committed retrieval and cluster metrics must come back to 1e-6 too
    params = load_params(REPO / "params.yaml")
    raw = {RAW_PIXELS: raw_pixel_set(Prepared.open(repo / "data" / "prepared"))}
    retrieval, _ = evaluate_model(raw[RAW_PIXELS], params.evaluate)
    clusters = cluster_model(raw[RAW_PIXELS], params.cluster).metrics
    for produced, committed in ((retrieval, "retrieval"), (clusters, "cluster")):
        expected = json.loads((REPO / "reports" / committed / f"{RAW_PIXELS}.json").read_text())
        assert produced.keys() <= expected.keys(), committed  # the stage adds the health and the protocol's words
        assert produced == pytest.approx({key: expected[key] for key in produced}, abs=1e-6), committed
