"""What query expansion (``evaluate.query_expansion``) does to retrieval, with its n chosen on validation queries.

    python benchmarks/query_expansion.py --run <clone where dvc repro embedded smallnet> [--run <another seed> ...]

For each run: the validation images search the train split for every n in ``--neighbours`` (the evaluate stage's
own index and metrics, only the queries and gallery differ), and the n with the best validation mAP@5 is the one
to set; then the test queries search the clone's ``evaluate.gallery`` with n = 0 and every n, all through
``embedlab.retrieval``. The test rows are reported for every n, so that the choice made on validation can be read
against them, never made on them. Writes ``benchmarks/results/query_expansion_cifar10.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def score(emb, queries, gallery, params, neighbours: int, *, r_deep: bool) -> dict[str, float]:
    """The retrieval metrics of ``queries`` against ``gallery`` (row indices of ``emb``), expanded with n."""
    from embedlab.retrieval.index import build_index
    from embedlab.retrieval.metrics import evaluate_retrieval

    index = build_index(emb.embeddings[gallery], params.metric, query_expansion=neighbours)
    report = evaluate_retrieval(
        emb.embeddings[queries], emb.labels[queries], index, emb.labels[gallery], list(emb.class_names),
        k=params.k, k_max=params.k, r_deep=r_deep,
    )  # fmt: skip
    return {key: round(value, 6) for key, value in report.metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, nargs="+", required=True)
    parser.add_argument("--model", default="smallnet")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[5, 10, 15, 20, 30, 50])
    parser.add_argument("--out", type=Path, default=RESULTS / "query_expansion_cifar10.json")
    args = parser.parse_args()

    from embedlab.core.params import load_params
    from embedlab.core.runtime import cpu_description
    from embedlab.embed.embeddings import EmbeddingSet
    from embedlab.retrieval.evaluation import gallery_rows

    report = {"cpu": cpu_description(), "model": args.model, "runs": []}
    for run in args.run:
        params = load_params(run / "params.yaml").evaluate
        emb = EmbeddingSet.load(run / "data" / "embeddings" / f"{args.model}.npz")
        entry = {"run": run.name, "train_seed": load_params(run / "params.yaml").for_backbone(args.model)[1].seed}
        val, train = emb.split("val"), emb.rows("train")
        entry["validation"] = {n: score(emb, val, train, params, n, r_deep=False) for n in [0, *args.neighbours]}
        key = f"map@{params.k}"
        entry["chosen_on_validation"] = max(args.neighbours, key=lambda n: entry["validation"][n][key])
        test, gallery = emb.split("test"), gallery_rows(emb, params.gallery)
        entry["test"] = {n: score(emb, test, gallery, params, n, r_deep=True) for n in [0, *args.neighbours]}
        entry["protocol"] = f"{len(test)} test vs {len(gallery)} {params.gallery}, exact {params.metric}"
        report["runs"].append(entry)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(entry), flush=True)
    print(f"\nCPU flags: {' '.join(report['cpu']['flags'])}")
    for entry in report["runs"]:
        chosen = entry["chosen_on_validation"]
        print(f"{entry['run']} (seed {entry['train_seed']}): n = {chosen} chosen on validation")
        for n, metrics in entry["test"].items():
            print(f"  n {n:>3}: test mAP@5 {metrics['map@5']:.4f}  P@1 {metrics['precision@1']:.4f}  "
                  f"MAP@R {metrics['map@r']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
