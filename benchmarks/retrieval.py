"""Retrieval speed and memory: our exact search vs scikit-learn brute force, and faiss recall against exact.

    python benchmarks/retrieval.py                       # 10,000 × 50,000 × 256, then faiss on 1,000,000
    python benchmarks/retrieval.py --gallery 5000 --queries 500 --faiss-gallery 20000   # a quick look

Every measurement runs in its own child process, so each peak RSS (from ``wait4``) is that method's alone. The
data are L2-normalised points around 1,000 random centres (uniform random vectors have no neighbours worth the
name, which makes approximate indexes look worse than on real embeddings and exact ones no different).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts

K = 5


def make_data(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((1000, dim), dtype=np.float32)
    x = centres[rng.integers(0, 1000, size=count)]
    x += 0.7 * rng.standard_normal((count, dim), dtype=np.float32)  # float32 throughout: RSS shows the search
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def child(method: str, queries: int, gallery: int, dim: int, extra: dict) -> dict:
    """Runs inside the child: build data, time the method, return its neighbours' digest and timings."""
    from sklearn.neighbors import NearestNeighbors

    from embedlab.core.params import FaissParams
    from embedlab.retrieval.index import ExactIndex, FaissIndex, search

    q, g = make_data(queries, dim, 1), make_data(gallery, dim, 2)
    start = time.perf_counter()
    if method == "embedlab_exact":
        indices, _ = search(q, ExactIndex(g), K)
    elif method == "sklearn_brute":
        nn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(g)
        _, indices = nn.kneighbors(q)
    else:  # one build, then a search per setting of the query-time knob
        knob = "ef_search" if method == "faiss_hnsw" else "nprobe"
        settings = extra.pop("sweep")
        index = FaissIndex(g, "cosine", FaissParams(type=method.removeprefix("faiss_"), **extra), build_threads=None)
        built = time.perf_counter()
        rows = []
        for value in settings:
            if knob == "ef_search":
                index.index.hnsw.efSearch = value
            else:
                index.index.nprobe = value
            began = time.perf_counter()
            indices, _ = search(q, index, K)
            rows.append({knob: value, "search_s": time.perf_counter() - began})
            np.save(f"{os.environ['BENCH_OUT']}.{value}.npy", indices)
        return {"build_s": built - start, "searches": rows}
    elapsed = time.perf_counter() - start
    np.save(os.environ["BENCH_OUT"], indices)
    return {"search_s": elapsed}


def measure(method: str, queries: int, gallery: int, dim: int, out: str, extra: dict | None = None) -> dict:
    """Run one method in a child process; return its timings, peak RSS (MiB) and neighbour file."""
    args = [sys.executable, __file__, "--child", method, str(queries), str(gallery), str(dim), json.dumps(extra or {})]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env={**os.environ, "BENCH_OUT": out})
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{method} failed")
    return {**json.loads(stdout), "peak_rss_mib": usage.ru_maxrss / 1024, "neighbours": out}


def recall(approx: str, exact: str) -> float:
    a, e = np.load(approx), np.load(exact)
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, e, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--faiss-queries", type=int, default=1_000)
    parser.add_argument("--faiss-gallery", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/embedlab-bench")
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = lambda name: os.path.join(args.workdir, f"{name}.npy")  # noqa: E731

    print(f"exact search: {args.queries:,} queries × {args.gallery:,} gallery × {args.dim}-d, top {K}, cosine")
    ours = measure("embedlab_exact", args.queries, args.gallery, args.dim, path("ours"))
    sk = measure("sklearn_brute", args.queries, args.gallery, args.dim, path("sklearn"))
    for name, row in (("embedlab exact", ours), ("sklearn brute", sk)):
        print(f"  {name:<15} {row['search_s']:7.2f} s   peak RSS {row['peak_rss_mib']:7.0f} MiB")
    same = recall(path("ours"), path("sklearn"))
    print(f"  speed-up {sk['search_s'] / ours['search_s']:.2f}×, same neighbours: {same:.4f}")
    from embedlab.core.runtime import cpu_description

    report = {"cpu": cpu_description(), "args": vars(args) | {"out": str(args.out)}, "exact": {"embedlab": ours,
              "sklearn": sk, "same_neighbours": same}, "faiss": {"exact": None, "indexes": []}}  # fmt: skip

    print(f"faiss: {args.faiss_queries:,} queries × {args.faiss_gallery:,} gallery × {args.dim}-d, recall@{K} vs exact")
    truth = measure("embedlab_exact", args.faiss_queries, args.faiss_gallery, args.dim, path("truth"))
    print(f"  {'exact':<28} search {truth['search_s']:7.2f} s   peak RSS {truth['peak_rss_mib']:7.0f} MiB")
    report["faiss"]["exact"] = truth
    configs = [
        ("faiss_hnsw", {"hnsw_m": 16, "ef_construction": 100, "sweep": [64, 128, 256]}),
        ("faiss_ivf", {"nlist": 4096, "sweep": [8, 32]}),
    ]
    for method, extra in configs:
        row = measure(method, args.faiss_queries, args.faiss_gallery, args.dim, path(method), dict(extra))
        built = {k: v for k, v in extra.items() if k != "sweep"}
        print(
            f"  {method.removeprefix('faiss_')} {built}: build {row['build_s']:.1f} s (all cores), "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
        report["faiss"]["indexes"].append({"method": method, **built, **row})
        for search_row in row["searches"]:
            knob, value = next((k, v) for k, v in search_row.items() if k != "search_s")
            speed_up = truth["search_s"] / search_row["search_s"]
            found = recall(f"{path(method)}.{value}.npy", path("truth"))
            search_row[f"recall@{K}"] = found
            print(
                f"    {knob}={value:<4} search {search_row['search_s']:6.2f} s ({speed_up:5.1f}× exact)"
                f"   recall@{K} {found:.4f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, queries, gallery, dim, extra = sys.argv[2:7]
        print(json.dumps(child(method, int(queries), int(gallery), int(dim), json.loads(extra))))
    else:
        main()
