"""Query latency (p50/p99) and queries per second of ``embedlab serve``, per model, exact and faiss index.

A real server process per index kind, loaded from a pipeline run; queries are the run's test images uploaded as PNG
over HTTP (decode, resize, embedding and search all included), first one at a time, then from concurrent clients.
With ``--rev`` (repeated) the server compares those revisions: one row per (revision, model), and one row for the
query the comparison page sends, answered by every (revision, model) at once.

    python benchmarks/serve_latency.py --root path/to/cifar10-run
    python benchmarks/serve_latency.py --root path/to/cifar10-run --rev recipe --rev whitened --indexes exact
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from embedlab.core.runtime import cpu_description
from embedlab.data.prepared import Prepared

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def start_server(root: Path, index: str, revisions: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "embedlab.cli", "serve", "--port", "0", "--index", index]
        + [arg for rev in revisions for arg in ("--rev", rev)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        # This checkout's embedlab, not the run's copy (PYTHONSAFEPATH: the working directory is not put first).
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONSAFEPATH": "1"},
    )
    for line in process.stdout:
        if line.startswith("open http://"):
            return process, line.split()[1].rstrip("/")
    raise SystemExit(f"the server exited with {process.wait()}")


def post(session: requests.Session, url: str, png: bytes, rows: dict[str, str], k: int) -> float:
    start = time.perf_counter()
    response = session.post(f"{url}/api/search", params={"k": k, **rows}, files={"image": ("q.png", png)})
    response.raise_for_status()
    return time.perf_counter() - start


def measure(url: str, pngs: list[bytes], model: dict[str, str], k: int, queries: int, clients: int) -> dict[str, float]:
    """p50/p99 one query at a time, and queries per second from ``clients`` at once, of the rows ``model`` asks for
    (``models`` and ``sources`` of the search request; empty: every row)."""
    session = requests.Session()
    for png in pngs[:5]:  # warm-up: the connection and the first batch sizes
        post(session, url, png, model, k)
    latencies = np.array([post(session, url, pngs[i % len(pngs)], model, k) for i in range(queries)]) * 1000
    sessions = [requests.Session() for _ in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: post(sessions[i % clients], url, pngs[i % len(pngs)], model, k), range(queries)))
    qps = queries / (time.perf_counter() - start)
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "qps_sequential": round(1000 / float(latencies.mean()), 1),
        "qps_concurrent": round(qps, 1),
    }


def rows_to_measure(info: dict, index: str) -> list[tuple[dict[str, str], dict]]:
    """Each (revision, model) alone, then, when several revisions are served, every row in one query (the request
    the comparison page sends)."""
    sources = info["sources"]
    measured = [
        ({"models": m["name"], "sources": s["name"]},
         {"revision": s["name"], "model": m["name"], "index": index, "gallery": m["gallery"]})
        for s in sources for m in s["models"]
    ]  # fmt: skip
    if len(sources) > 1:
        every = {"revision": "+".join(s["name"] for s in sources), "model": f"all {len(measured)} rows"}
        measured.append(({}, {**every, "index": index, "gallery": sources[0]["models"][0]["gallery"]}))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a repository clone where `dvc repro` ran")
    parser.add_argument("--queries", type=int, default=200, help="queries per model and mode")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the throughput figure")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--indexes", nargs="+", default=["exact", "faiss"])
    parser.add_argument("--rev", action="append", default=[], help="serve these revisions side by side (repeat it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_cifar10.json")
    args = parser.parse_args()

    prepared = Prepared.open(args.root / "data" / "prepared")
    rows = prepared.split("test")[: args.queries]
    pngs = []
    for row in rows:
        out = io.BytesIO()
        Image.fromarray(np.asarray(prepared.images[row])).save(out, "PNG")
        pngs.append(out.getvalue())
    cpu = cpu_description()
    results = {"cpu": cpu, "queries": args.queries, "clients": args.clients, "k": args.k, "rows": []}
    results["revisions"] = args.rev
    for index in args.indexes:
        process, url = start_server(args.root.resolve(), index, args.rev)
        try:
            for asked, row in rows_to_measure(requests.get(f"{url}/api/info").json(), index):
                row.update(measure(url, pngs, asked, args.k, args.queries, args.clients))
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait()
    print(f"\nCPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}")
    print(f"{args.queries} queries per row, k={args.k}; throughput from {args.clients} concurrent clients\n")
    print("| revision | model | index | gallery | p50 ms | p99 ms | queries/s, one client | queries/s, concurrent |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['revision']} | {r['model']} | {r['index']} | {r['gallery']:,} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['qps_sequential']} | {r['qps_concurrent']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
