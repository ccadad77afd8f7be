"""Recorded runs: `embedlab results collect` copies a run's files, `table` reads its numbers from them."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedlab.cli import main
from embedlab.cli.results import collect, table_rows
from embedlab.core.errors import UserError

from ..conftest import REPO


def test_collect_copies_the_run_and_the_table_reads_its_metrics(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for name in ("metrics", "reports", "plots", "dvclive"):
        shutil.copytree(REPO / name, run / name)
    shutil.copy(REPO / "params.yaml", run / "params.yaml")
    shutil.copy(REPO / "requirements.lock", run / "requirements.lock")
    # A number changed in the run's metrics must show up in the table: nothing is read from anywhere else.
    retrieval = json.loads((run / "reports/retrieval/resnet50.json").read_text())
    retrieval["map@5"] = 0.123456
    (run / "reports/retrieval/resnet50.json").write_text(json.dumps(retrieval))
    train_metrics = json.loads((run / "reports/train/resnet50.json").read_text())
    train_metrics["wall_seconds"] = 48.0  # under a minute: still minutes with one decimal, not a score
    train_metrics["test_flip_averaged_accuracy"] = 0.5  # digits trains without flips; a CIFAR-10 run has it
    train_metrics["test_flip_translate_averaged_accuracy"] = 0.625
    (run / "reports/train/resnet50.json").write_text(json.dumps(train_metrics))

    main(["results", "collect", str(run), str(tmp_path / "out"), "--seconds", "12.5"])
    out = tmp_path / "out"
    assert (out / "metrics/retrieval/resnet50.json").exists() and (out / "reports/train/resnet50.json").exists()
    assert (out / "plots/train").is_dir() and (out / "plots/retrieval/map_at_k.json").exists()
    assert not (out / "plots/retrieval/confusion").exists()  # per-query rows: they stay in the run's clone
    described = json.loads((out / "run.json").read_text())
    assert described["pipeline_seconds"] == 12.5
    environment = described["environment"]  # which exact environment made the run
    assert (
        environment["requirements_lock_sha256"] == hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    )
    assert environment["packages"]["tensorflow"] == importlib.metadata.version("tensorflow")
    rows = {row["model"]: row for row in table_rows(out)}
    assert list(rows)[-2:] == ["stack", "raw_pixels"]
    assert rows["resnet50"]["map@5"] == 0.123456
    train = json.loads((REPO / "reports/train/densenet121.json").read_text())
    assert rows["densenet121"]["test_accuracy"] == train["test_accuracy"]
    assert rows["densenet121"]["train_images"] == train["train_images"]
    printed = capsys.readouterr().out
    assert "| resnet50 | 0.1235 |" in printed and "| **stack** |" in printed
    resnet_row = next(line for line in printed.splitlines() if line.startswith("| resnet50 |"))
    cells = resnet_row.split(" | ")
    # the flip-averaged, flips + shifts and train-minutes columns
    assert cells[7] == "0.5000" and cells[8] == "0.6250" and cells[11] == "0.8", resnet_row


def test_collect_needs_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `dvc repro`"):
        collect(tmp_path, tmp_path / "out", command="dvc repro", pipeline_seconds=None)


def test_the_table_reads_runs_recorded_before_metrics_and_reports_were_split() -> None:
    """results/<run>/ folders recorded earlier hold every figure in metrics/: the table still finds them there."""
    recorded = REPO / "results" / "cifar10-four-backbones"
    assert not (recorded / "reports").exists()
    rows = {row["model"]: row for row in table_rows(recorded)}
    expected = json.loads((recorded / "metrics" / "train" / "smallnet.json").read_text())
    assert rows["smallnet"]["train_images"] == expected["train_images"] and rows["smallnet"]["epochs"] is not None
    assert rows["stack"]["linear_probe_accuracy"] is not None


def test_experiments_outside_a_dvc_repository_is_one_line(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "embedlab.cli", "experiments"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: experiments: "), result.stderr


def test_collect_leaves_behind_the_files_of_backbones_the_run_did_not_train(tmp_path: Path) -> None:
    """A clone of the digits pipeline rerun with smallnet alone still holds the other backbones' lock stages, logs,
    metrics and plots: none of them reaches the results folder."""
    import yaml

    run = tmp_path / "run"
    for name in ("metrics", "reports", "plots", "dvclive"):
        shutil.copytree(REPO / name, run / name)
    shutil.copy(REPO / "dvc.lock", run / "dvc.lock")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (run / "params.yaml").write_text(
        yaml.safe_dump({**params, "backbones": {"smallnet": params["backbones"]["smallnet"]}})
    )
    out = collect(run, tmp_path / "out", command="dvc repro", pipeline_seconds=None)
    others = ("densenet121", "resnet50", "vgg16")
    assert all((run / "metrics/train" / f"{b}.json").exists() for b in others)  # the clone did hold them
    left = [str(p.relative_to(out)) for p in out.rglob("*") if any(b in p.name for b in others)]
    assert left == []
    stages = yaml.safe_load((out / "dvc.lock").read_text())["stages"]
    assert {"train@smallnet", "embed@smallnet", "evaluate"} <= set(stages)
    assert not [s for s in stages if any(b in s for b in others)]
    assert (out / "metrics/train/smallnet.json").exists() and (out / "dvclive/smallnet").is_dir()
    assert (out / "metrics/retrieval/stack.json").exists() and (out / "metrics/retrieval/raw_pixels.json").exists()
