"""train.strategy=multiworker for real: two worker processes on 127.0.0.1 train smallnet on the tiny digits.

The chief runs in the repository folder; the other worker in a folder of its own that sees only the data and the
chief's ``models/.work`` (as a second machine would, over shared storage), so anything it wrote would show.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from embedlab.core.params import parse_params
from embedlab.data.download.digits import write_digits
from embedlab.data.prepare import prepare

from ..conftest import REPO

pytestmark = pytest.mark.slow

PARAMS = {
    "data": {"max_per_class": 14, "image_size": 32},
    "augment": {"rotation": 0.05, "zoom": 0.1},
    "backbones": {"smallnet": {"dropout": 0.0}},
    "model": {"embedding_dim": 16},
    "train": {"epochs": 4, "batch_size": 32, "patience": 4, "checkpoint_interval": 0, "strategy": "multiworker"},
}
# A one-worker run with the same global batch is not bit-identical: each worker's BatchNorm normalises its half of
# the batch. docs/training.md states these tolerances.
LOSS_TOLERANCE, ACCURACY_TOLERANCE = 0.05, 0.1
OUTPUTS = ("dvclive", "metrics", "reports", "plots")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The chief's repository folder (data prepared), the other worker's folder and a one-worker folder."""
    root = tmp_path_factory.mktemp("multiworker")
    chief, worker, single = root / "chief", root / "worker", root / "single"
    write_digits(root / "raw")
    prepare(root / "raw", chief / "data" / "prepared", parse_params(PARAMS).data)
    (chief / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (chief / "models" / ".work").mkdir(parents=True)
    for other in (worker, single):
        (other / "models").mkdir(parents=True)
        (other / "data").symlink_to(chief / "data")
    (worker / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (worker / "models" / ".work").symlink_to(chief / "models" / ".work")  # the shared checkpoint folder
    (worker / "tmp").mkdir()
    one = {**PARAMS, "train": {**PARAMS["train"], "strategy": "auto"}}
    (single / "params.yaml").write_text(yaml.safe_dump(one))
    return {"chief": chief, "worker": worker, "single": single}


def _start(folder: Path, tf_config: dict | None, tmp: Path | None = None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "train.py"), "smallnet"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _cluster(folders: dict[str, Path], worker_folder: Path | None = None) -> tuple[subprocess.Popen, subprocess.Popen]:
    ports = _free_ports(2)
    spec = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    chief = _start(folders["chief"], {"cluster": spec, "task": {"type": "worker", "index": 0}})
    worker_folder = worker_folder or folders["worker"]
    worker = _start(worker_folder, {"cluster": spec, "task": {"type": "worker", "index": 1}}, worker_folder / "tmp")
    return chief, worker


def _finish(*processes: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    return outputs


def _report(folder: Path) -> dict:
    return json.loads((folder / "reports" / "train" / "smallnet.json").read_text())


def _history(folder: Path, name: str) -> list[float]:
    rows = (folder / "dvclive" / "smallnet" / "plots" / "metrics" / name).read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


def _quality(report: dict) -> dict:
    return {k: v for k, v in report.items() if "accuracy" in k or k in ("best_val_loss", "best_epoch", "epochs_run")}


@pytest.fixture(scope="module")
def uninterrupted(folders: dict[str, Path]) -> dict:
    outputs = _finish(*_cluster(folders))
    assert "worker finished; the chief wrote the outputs" in outputs[1]
    return {"report": _report(folders["chief"]), "val_loss": _history(folders["chief"], "val/loss.tsv")}


def test_two_workers_train_and_only_the_chief_writes(folders: dict[str, Path], uninterrupted: dict) -> None:
    chief, worker = folders["chief"], folders["worker"]
    assert uninterrupted["report"]["devices"] == 2 and uninterrupted["report"]["epochs_run"] == 4
    assert {p.name for p in (chief / "models").iterdir()} == {".work", "smallnet.keras", "smallnet.weights.h5"}
    assert len(uninterrupted["val_loss"]) == 4  # one dvclive row per epoch, logged once
    assert not any((worker / name).exists() for name in OUTPUTS)
    assert {p.name for p in (worker / "models").iterdir()} == {".work"}
    assert not list((worker / "tmp").iterdir())  # the worker's scratch checkpoints and log are gone
    assert not list((chief / "models" / ".work").iterdir())  # finished: the resume checkpoints are gone


def test_two_workers_match_one_worker_with_the_same_global_batch(folders: dict[str, Path], uninterrupted: dict) -> None:
    process = _start(folders["single"], None)
    _finish(process)
    single = _report(folders["single"])
    assert single["devices"] == 1
    for two, one in zip(uninterrupted["val_loss"], _history(folders["single"], "val/loss.tsv"), strict=True):
        assert abs(two - one) <= LOSS_TOLERANCE
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert abs(uninterrupted["report"][key] - single[key]) <= ACCURACY_TOLERANCE, key


def test_a_killed_worker_resumes_with_the_chief_to_the_same_result(
    folders: dict[str, Path], uninterrupted: dict, tmp_path: Path
) -> None:
    chief, worker = _cluster(folders)
    state = folders["chief"] / "models" / ".work" / "smallnet" / "state.json"
    deadline = time.monotonic() + 300
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 2):
        assert time.monotonic() < deadline and chief.poll() is None, "no checkpoint after epoch 2"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    output = chief.communicate(timeout=120)[0]  # the chief's next collective step fails: it stops by itself
    assert chief.returncode != 0 and "a worker of the cluster stopped" in output.splitlines()[-1], output
    assert "resume from the chief's last checkpoint" in output.splitlines()[-1]
    assert json.loads(state.read_text())["epoch"] >= 2  # the chief's checkpoint survived

    # A worker that cannot see the chief's checkpoint folder: both stop with one line instead of waiting forever.
    stranger = tmp_path / "stranger"
    (stranger / "tmp").mkdir(parents=True)
    (stranger / "data").symlink_to(folders["chief"] / "data")
    (stranger / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    outputs = [p.communicate(timeout=120)[0] for p in _cluster(folders, stranger)]
    for output in outputs:
        assert "do not agree" in output and "models/.work" in output, output

    resumed = _finish(*_cluster(folders))
    assert "resuming after epoch" in resumed[0] and "resuming after epoch" in resumed[1]
    assert _quality(_report(folders["chief"])) == _quality(uninterrupted["report"])
    assert _history(folders["chief"], "val/loss.tsv") == uninterrupted["val_loss"]
