"""Shared fixtures: generated datasets, a real HTTP server on 127.0.0.1, and a throwaway copy of the repo."""

from __future__ import annotations

import getpass
import gzip
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from embedlab.embed.embeddings import EmbeddingSet, l2_normalize

REPO = Path(__file__).resolve().parents[1]


def missing_tool(reason: str) -> None:
    """A test whose tool (Chromium, sshd, the Vega scripts) is missing: it skips on a developer's machine, and it
    fails under ``CI=true``, where .ci/run installs the tool, so CI can never be green without running it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def chromium() -> str:
    """Chromium's executable, found as Debian, Ubuntu or Chrome name it; missing, a missing tool."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        missing_tool("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    return str(found)


@contextmanager
def chromium_page(url: str, width: int, height: int) -> Iterator[tuple[Any, Any, list[str]]]:
    """Headless Chromium driven by playwright, with ``url`` open: yields the browser context (for more pages), the
    page, and the list every failed request or 4xx/5xx response of the context's pages is added to."""
    browser = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("playwright is not installed: pip install -e '.[dev]'")
    failed: list[str] = []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        context = launched.new_context(viewport={"width": width, "height": height})
        context.on("requestfailed", lambda request: failed.append(request.url))
        context.on("response", lambda response: response.status >= 400 and failed.append(response.url))
        page = context.new_page()
        page.goto(url)
        try:
            yield context, page, failed
        finally:
            launched.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the tiny pipeline run (a real `dvc repro`) or lives in tests/pipeline/ is a `pipeline`
    test, and every `pipeline` or `browser` test is slow, so `-m "not slow"` stays quick."""
    for item in items:
        if "pipeline" in getattr(item, "fixturenames", ()) or "pipeline" in item.path.parent.parts[-1:]:
            item.add_marker(pytest.mark.pipeline)
        if item.get_closest_marker("pipeline") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


SHARED = Path(os.environ.get("EMBEDLAB_SHARED", REPO.parent / "shared"))
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"


# --- CIFAR-10 binary archives -------------------------------------------------------------------------------


@dataclass
class CifarArchive:
    path: Path
    md5: str
    images: np.ndarray  # (N, 32, 32, 3), train batches then test batch
    labels: np.ndarray


def make_cifar_archive(path: Path, per_batch: int = 6, seed: int = 0) -> CifarArchive:
    """Write an archive in the exact layout of the official ``cifar-10-binary.tar.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    all_images, all_labels = [], []
    with tarfile.open(path, "w:gz") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        add("batches.meta.txt", ("\n".join(names) + "\n\n").encode())
        for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
            images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, size=per_batch, dtype=np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(per_batch, -1)
            add(name, np.concatenate([labels[:, None], planes], axis=1).tobytes())
            all_images.append(images)
            all_labels.append(labels)
        add("readme.html", b"<html></html>")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return CifarArchive(path, md5, np.concatenate(all_images), np.concatenate(all_labels).astype(np.int64))


@pytest.fixture
def cifar_archive(tmp_path: Path) -> CifarArchive:
    return make_cifar_archive(tmp_path / "served" / "cifar-10-binary.tar.gz", per_batch=60)


# --- A real HTTP server ---------------------------------------------------------------------------------------


@dataclass
class FileServer:
    """Serves one file; can honour or ignore Range and cut the first N responses short."""

    payload: bytes
    honour_range: bool = True
    cut_after: int | None = None  # bytes sent before dropping the connection
    cuts_left: int = 0
    busy: list[tuple[int, str | None]] = field(default_factory=list)  # first answers: (429/503, Retry-After)
    gzip_if_accepted: bool = False  # like many servers: Content-Encoding gzip when the client accepts it
    range_headers: list[str | None] = field(default_factory=list)
    accept_encodings: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def file_server(cifar_archive: CifarArchive) -> Iterator[FileServer]:
    state = FileServer(payload=cifar_archive.path.read_bytes())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.accept_encodings.append(self.headers.get("Accept-Encoding"))
            if state.busy:
                status, retry_after = state.busy.pop(0)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.payload
            encoded = state.gzip_if_accepted and "gzip" in (self.headers.get("Accept-Encoding") or "")
            if encoded:
                body = gzip.compress(body, mtime=0)
            requested = self.headers.get("Range")
            state.range_headers.append(requested)
            start = 0
            if requested and state.honour_range:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            if encoded:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            chunk = body[start:]
            if state.cuts_left > 0 and state.cut_after is not None:
                state.cuts_left -= 1
                self.wfile.write(chunk[: state.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- A throwaway copy of the repository -----------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: Path):
    """A real OpenSSH server on 127.0.0.1 with a throwaway host key and a throwaway client key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary) or not shutil.which("ssh-keygen"):
        missing_tool("OpenSSH server not installed (Debian: apt-get install openssh-server); .ci/run installs it")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "client_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], keys)
    shutil.copy(keys / "client_key.pub", keys / "authorized_keys")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                break
        if server.poll() is not None:
            pytest.fail(f"sshd did not start: {server.stderr.read()}")
        time.sleep(0.2)
    try:
        yield {"port": port, "user": getpass.getuser(), "key": keys / "client_key"}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def run(
    cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's bin dir first on PATH (so ``python`` in dvc.yaml is ours)."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.update(env or {})
    result = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check)


def copy_repo(dest: Path) -> Path:
    """Copy the project's files (tracked and new, not ignored) to ``dest`` as a fresh git repo with one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not name.startswith(("data/", "metrics/", "reports/", "plots/", "dvclive/")):  # outputs
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for keep in ("data/.gitignore",):
        if (REPO / keep).exists():
            (dest / keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / keep, dest / keep)
    (dest / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


def set_params(repo: Path, **overrides: object) -> None:
    """Override dotted keys in ``params.yaml`` (``data__image_size=16`` sets ``data.image_size``)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


TINY_BACKBONES = {"mobilenetv2": {"epochs": 2}, "smallnet": {"epochs": 2}}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline run once on a tiny config (two small backbones, 8 digits per class: 4 train, 2 val, 2 test)
    with the default stack (select); treat as read-only."""
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    set_params(
        repo,
        data__max_per_class=8,
        data__val_fraction=0.25,
        backbones=TINY_BACKBONES,
        model__embedding_dim=16,
        train__batch_size=32,
        evaluate__examples=3,
        cluster__tsne__sample=40,
        projector__max_points=30,
    )
    dvc("repro", cwd=repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline run"], repo)
    return repo


# --- small labelled embeddings -------------------------------------------------------------------------------


def blobs(per_class: int = 30, classes: int = 4, spread: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one centre per class, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = np.eye(8)[:classes] * 5
    return l2_normalize(centres[labels] + spread * rng.normal(size=(len(labels), 8))), labels


def blob_embedding_set(count_per_class: int = 10, classes: int = 3, dim: int = 5) -> EmbeddingSet:
    """An embeddings file's content for a few classes, spread over the three splits."""
    vectors, labels = blobs(per_class=count_per_class, classes=classes, spread=0.2)
    vectors = vectors[:, :dim] if dim <= 8 else vectors
    splits = np.array(["train", "val", "test"] * (len(labels) // 3 + 1))[: len(labels)]
    ids = np.array([f"img/{i:03d}.png" for i in range(len(labels))])
    return EmbeddingSet(l2_normalize(vectors), ids, labels, splits, np.array(["cat", "dog", "eel"][:classes]))
