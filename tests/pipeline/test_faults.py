"""Faults survived: every stage that writes a large output, and `dvc push` / `dvc pull` to a local and an SSH remote,
is killed with SIGKILL at a point the test picks, then run again with the same command. Checked: nothing partial is
ever visible under an output path, the rerun's outputs equal the uninterrupted run's (byte for byte; for a remote or
cache, every object's content hashes to its name and DVC finds nothing missing), and no temporary file is left.

The kill points are picked inside the killed process itself, by a few lines run before the command: at the first
``fsync`` of an output's temporary sibling (its data written, not yet durable), at the rename that would publish it,
or, for DVC transfers, once an object larger than one SSH write block is partly transferred.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
from pathlib import Path

import pytest

from ..conftest import dvc, run
from .test_dvc_workflow import _commit_all, _copy

# Runs ``sys.argv[3:]`` as a stage script and SIGKILLs itself at point ``sys.argv[1]`` ("write" or "commit") of the
# outputs listed in ``sys.argv[2]`` (comma-separated paths).
STAGE_KILLER = """
import os, runpy, signal, sys
point, outputs = sys.argv[1], [os.path.abspath(p) for p in sys.argv[2].split(",")]

def temporary_of_output(path):
    path = os.path.abspath(path)
    for output in outputs:
        first = os.path.relpath(path, os.path.dirname(output)).split(os.sep)[0]
        if first.startswith("." + os.path.basename(output) + "."):
            return True
    return False

real_fsync, real_replace = os.fsync, os.replace

def fsync(fd):
    if point == "write" and temporary_of_output(os.readlink(f"/proc/self/fd/{fd}")):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)

def replace(source, target, *args, **kwargs):
    if point == "commit" and os.path.abspath(target) in outputs:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target, *args, **kwargs)

os.fsync, os.replace = fsync, replace
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Runs `dvc <sys.argv[2:]>` and SIGKILLs itself in the middle of the first object of at least 256 KiB it transfers into
# the store ``sys.argv[1]`` (a remote folder, or the cache for a pull): over SSH once the transfer's progress (fsspec
# callbacks; SSH writes 240 KiB blocks) shows it partly done, on a local file system once half of the object's bytes
# are copied to wherever DVC copies it (local copies under 1 GB report no progress).
DVC_KILLER = """
import os, shutil, signal, sys
from fsspec.callbacks import Callback

store, LARGE = os.path.abspath(sys.argv[1]), 256 * 1024

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def killing_update(update):
    def wrapped(self, *args, **kwargs):
        result = update(self, *args, **kwargs)
        if self.size and self.size >= LARGE and 0 < self.value < self.size:
            kill()
        return result
    return wrapped

def killing_copyfile(copyfile):
    def wrapped(source, target, *args, **kwargs):
        size = os.path.getsize(source)
        if os.path.abspath(target).startswith(store + os.sep) and size >= LARGE:
            with open(source, "rb") as whole, open(target, "wb") as part:
                part.write(whole.read(size // 2))
            kill()
        return copyfile(source, target, *args, **kwargs)
    return wrapped

Callback.absolute_update = killing_update(Callback.absolute_update)
Callback.relative_update = killing_update(Callback.relative_update)
shutil.copyfile = killing_copyfile(shutil.copyfile)
from dvc.cli import main
sys.exit(main(sys.argv[2:]))
"""

STAGES = [  # (stage, its command, its large outputs)
    ("download", ["stages/download.py"], ["data/raw"]),
    ("preprocess", ["stages/preprocess.py"], ["data/prepared"]),
    ("train@smallnet", ["stages/train.py", "smallnet"], ["models/smallnet.keras", "models/smallnet.weights.h5"]),
    ("embed@mobilenetv2", ["stages/embed.py", "mobilenetv2"], ["data/embeddings/mobilenetv2.npz"]),
    ("stack", ["stages/stack.py"], ["data/stack/stack.npz", "models/stack.npz"]),
    # the stages after stack write many small files, each through the same writers: the first model's
    ("augment_preview", ["stages/augment_preview.py"], ["plots/data/augmentations.png"]),
    ("evaluate", ["stages/evaluate.py"], ["metrics/retrieval/mobilenetv2.json", "reports/retrieval/mobilenetv2.json"]),
    ("cluster", ["stages/cluster.py"], ["metrics/cluster/mobilenetv2.json", "reports/cluster/mobilenetv2.json"]),
    ("projector", ["stages/projector.py"], ["projector/mobilenetv2"]),
]  # fmt: skip


def _leftovers(repo: Path, outputs: list[str]) -> list[Path]:
    """Temporary siblings of the outputs (hidden, named after them)."""
    return [p for output in outputs for p in (repo / output).parent.glob(f".{Path(output).name}.*")]


def _same_files(path: Path, reference: Path) -> bool:
    """``path`` holds the same bytes as ``reference`` (a file, or a folder file by file)."""
    if reference.is_file():
        return path.is_file() and path.read_bytes() == reference.read_bytes()
    names = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) and all(
        (path / name).read_bytes() == (reference / name).read_bytes() for name in names
    )


@pytest.fixture(scope="module")
def repo(pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(pipeline, tmp_path_factory.mktemp("faults") / "repo")


CASES = [
    pytest.param(*stage, point, id=f"{stage[0]}-{point}")
    for stage in STAGES
    for point in (["write"] if stage[0].startswith("train") else ["write", "commit"])  # training twice is slow
]


@pytest.mark.parametrize(("stage", "command", "outputs", "point"), CASES)
def test_a_stage_killed_part_way_leaves_nothing_partial_and_reruns_to_the_same_outputs(
    pipeline: Path, repo: Path, stage: str, command: list[str], outputs: list[str], point: str
) -> None:
    for output in outputs:  # no previous version: whatever is under the path after the kill came from this run
        target = repo / output
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    killed = run([sys.executable, "-c", STAGE_KILLER, point, ",".join(outputs), *command], repo, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not any((repo / output).exists() for output in outputs)  # nothing published, not even part of it
    assert _leftovers(repo, outputs), "the kill came before any output was written"

    run([sys.executable, *command], repo)  # the same command again
    for output in outputs:  # byte for byte the uninterrupted run's
        assert _same_files(repo / output, pipeline / output), f"{stage}: {output}"
    assert not _leftovers(repo, outputs)  # the killed writer's temporaries are gone


def _objects(store: Path) -> dict[str, Path]:
    """Every object file in a DVC remote or cache, by the hash its path names."""
    found = {}
    for path in (store / "files" / "md5").glob("*/*"):
        if not path.name.startswith("."):
            found[path.parent.name + path.name.removesuffix(".dir")] = path
    return found


def _damaged(store: Path) -> list[Path]:
    """The objects whose content does not hash to their name (partial or corrupt)."""
    return [path for name, path in _objects(store).items() if hashlib.md5(path.read_bytes()).hexdigest() != name]


def _killed_mid_object(store: Path) -> bool:
    """A transfer was cut inside an object: DVC's temporary file for it is there (or the object is partial)."""
    return bool(list(store.glob("files/md5/*/.*.tmp")) or _damaged(store))


def _remote(repo: Path, kind: str, tmp_path: Path, sshd_info: dict | None) -> Path:
    store = tmp_path / f"{kind}-store"
    url = str(store) if kind == "local" else f"ssh://{sshd_info['user']}@127.0.0.1:{sshd_info['port']}{store}"
    dvc("remote", "add", "-d", "store", url, cwd=repo)
    dvc("remote", "modify", "store", "verify", "true", cwd=repo)
    if kind == "ssh":
        dvc("remote", "modify", "--local", "store", "keyfile", str(sshd_info["key"]), cwd=repo)
    _commit_all(repo, "remote storage")
    return store


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_push_and_pull_killed_mid_transfer_complete_on_the_next_run(
    pipeline: Path, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    sshd_info = request.getfixturevalue("sshd") if kind == "ssh" else None
    origin = _copy(pipeline, tmp_path / "origin")
    store = _remote(origin, kind, tmp_path, sshd_info)

    killed = run([sys.executable, "-c", DVC_KILLER, str(store), "push"], origin, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert json.loads(dvc("status", "--cloud", "--json", cwd=origin).stdout or "{}")  # killed part-way
    assert _killed_mid_object(store)
    dvc("push", cwd=origin)  # the same command again
    assert json.loads(dvc("status", "--cloud", "--json", cwd=origin).stdout or "{}") == {}  # nothing missing
    assert not _damaged(store)  # and nothing partial

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    if kind == "ssh":
        dvc("remote", "modify", "--local", "store", "keyfile", str(sshd_info["key"]), cwd=clone)
    killed = run([sys.executable, "-c", DVC_KILLER, str(clone / ".dvc" / "cache"), "pull"], clone, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _killed_mid_object(clone / ".dvc" / "cache")
    dvc("pull", cwd=clone)  # the same command again
    assert not _damaged(clone / ".dvc" / "cache")
    assert json.loads(dvc("status", "--json", cwd=clone).stdout or "{}") == {}  # the workspace matches dvc.lock
