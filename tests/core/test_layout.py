"""One owner for every path: dvc.yaml declares exactly the paths embedlab.core.layout names."""

from __future__ import annotations

from pathlib import Path

import yaml

from embedlab.core.layout import STACK, Layout

from ..conftest import REPO


def _declared(stage: dict, kind: str) -> set[str]:
    entries = stage.get(kind) or []
    paths = {e if isinstance(e, str) else next(iter(e)) for e in entries}
    return {p for p in paths if not p.startswith(("embedlab/", "stages/"))}  # code deps: test_dvc_workflow


def test_dvc_yaml_declares_the_layouts_paths() -> None:
    """Each stage's data deps and outputs in dvc.yaml are the paths embedlab.core.layout names, so a path lives in
    one place in the code and DVC tracks what the code writes."""
    at, bb = Layout(Path()), "${key}"
    retrieval_plots = ["confusion", "map_at_k.json", "per_class_ap.json", "examples"]
    scored = [at.prepared, at.embeddings_dir, at.embeddings(STACK)]
    expected = {
        "download": {"outs": [at.raw]},
        "preprocess": {"deps": [at.raw], "outs": [at.prepared, at.data_report]},
        "augment_preview": {"deps": [at.prepared], "plots": [at.plot("data", "augmentations.png")]},
        "train": {
            "deps": [at.prepared],
            "outs": [at.model(bb), at.trainer_weights(bb), at.live(bb) / "metrics.json", at.report("train", bb)],
            "metrics": [at.metrics("train", bb)],
            "plots": [at.plot("train", f"{bb}_loss.png"), at.live(bb) / "plots" / "metrics"],
        },
        "embed": {"deps": [at.prepared, at.model(bb)], "outs": [at.embeddings(bb)]},
        "stack": {"deps": [at.embeddings_dir], "outs": [at.embeddings(STACK), at.stacker, at.stack_report]},
        "evaluate": {
            "deps": scored,
            "outs": [at.report("retrieval")],
            "metrics": [at.metrics("retrieval")],
            "plots": [at.plot("retrieval", name) for name in retrieval_plots],
        },
        "cluster": {
            "deps": scored,
            "outs": [at.report("cluster")],
            "metrics": [at.metrics("cluster")],
            "plots": [at.plot("cluster")],
        },
        "projector": {"deps": scored, "outs": [at.projector()]},
    }
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(expected)
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        for kind in ("deps", "outs", "metrics", "plots"):
            wanted = {p.as_posix() for p in expected[name].get(kind, [])}
            assert _declared(stage, kind) == wanted, f"{name} {kind}"
