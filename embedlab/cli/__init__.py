"""The ``embedlab`` command: query the pipeline's embeddings with any image, serve them, export them.

embedlab search photo.jpg --model densenet121 --k 5 --out collage.png
embedlab search a.png b.jpg --model resnet50 --json
embedlab serve --port 8000                      # web page + JSON API over every model
embedlab serve --rev HEAD --rev my-exp          # two revisions side by side, read through DVC
embedlab export --model stack --format parquet --out stack.parquet
embedlab results table results/cifar10
embedlab experiments                            # dvc exp show, narrowed to changed params and each model's mAP@k
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from embedlab.core.errors import run_main
from embedlab.core.layout import Layout


def search_collage(results: list[dict], queries: np.ndarray, prepared):
    """One row per query: the query, then its results with rank, score and class."""
    from embedlab.retrieval.collage import Tile, draw_collage

    position = {image_id: row for row, image_id in enumerate(prepared.index["id"])}
    rows = [
        [Tile(query, f"query\n{Path(result['query']).name}", bold=True)]
        + [
            Tile(prepared.images[position[hit["id"]]], f"#{hit['rank']} {hit['score']:.3f}\n{hit['class']}")
            for hit in result["results"]
        ]
        for result, query in zip(results, queries, strict=True)
    ]
    return draw_collage(rows)


def _search(args: argparse.Namespace) -> None:
    from embedlab.core.files import save_figure
    from embedlab.serve.query import search_files

    results, queries, prepared = search_files(args.images, args.model, args.k, layout=Layout(), metric=args.metric)
    if args.out:
        save_figure(search_collage(results, queries, prepared), args.out)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    for result in results:
        print(f"query: {result['query']}")
        print(f"  {'rank':>4}  {'score':>7}  {'class':<12} id")
        for hit in result["results"]:
            print(f"  {hit['rank']:>4}  {hit['score']:>7.4f}  {hit['class']:<12} {hit['id']}")
    if args.out:
        print(f"collage: {args.out}")


def _serve(args: argparse.Namespace) -> None:
    from embedlab.serve.app import serve
    from embedlab.serve.sources import WORKSPACE

    serve(Path(), args.rev or [WORKSPACE], args.models, host=args.host, port=args.port, index=args.index)


def _export(args: argparse.Namespace) -> None:
    from embedlab.cli.export import export_embeddings

    out = export_embeddings(args.model, args.format, args.out, layout=Layout())
    print(f"export: {args.model} -> {out}")


def _results(args: argparse.Namespace) -> None:
    from embedlab.cli.results import collect, markdown_table

    if args.action == "collect":
        out = collect(args.run_dir, args.results_dir, command=args.command_line, pipeline_seconds=args.seconds)
        print(f"results: {args.run_dir} -> {out}")
    print(markdown_table(args.results_dir))


def _experiments(args: argparse.Namespace) -> None:
    from embedlab.cli.experiments import experiment_table, format_table
    from embedlab.core.layout import RAW_PIXELS
    from embedlab.core.params import load_params

    params = load_params()
    metric = args.metric or f"map@{params.evaluate.k}"
    print(format_table(*experiment_table(".", metric=metric, order=[*params.model_names, RAW_PIXELS])))


def main(argv: list[str] | None = None) -> None:
    """The ``embedlab`` command line (see this module's docstring)."""
    parser = argparse.ArgumentParser(prog="embedlab", description="Query, serve and export the pipeline's embeddings.")
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="top-k similar images for query images")
    search.add_argument("images", nargs="+", help="image files (any format and mode Pillow reads)")
    search.add_argument("--model", required=True, help="a backbone from params.yaml (e.g. densenet121) or stack")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    search.add_argument("--out", help="write a collage PNG here")
    search.add_argument("--json", action="store_true", help="print JSON for scripts")
    search.set_defaults(run=_search)
    serve = commands.add_parser("serve", help="a web page and JSON API answering image queries with every model")
    serve.add_argument(
        "--rev",
        action="append",
        metavar="REV",
        help="a commit, branch, tag or DVC experiment to serve side by side, its outputs read through DVC "
        "(repeat it; 'workspace' is the working tree; default: the working tree only)",
    )
    serve.add_argument("--models", nargs="+", help="models to load (default: every backbone and the stack)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port (the URL printed says which)")
    serve.add_argument("--index", choices=["exact", "faiss"], help="search index (default: evaluate.index)")
    serve.set_defaults(run=_serve)
    export = commands.add_parser("export", help="write a model's embeddings as one row per image")
    export.add_argument("--model", required=True, help="a backbone from params.yaml, or stack")
    export.add_argument("--format", choices=["csv", "tsv", "parquet"], default="csv")
    export.add_argument("--out", help="output file (default: <model>.<format>)")
    export.set_defaults(run=_export)
    results = commands.add_parser("results", help="record a finished run in a results folder; print its table")
    results_actions = results.add_subparsers(dest="action", required=True)
    collect = results_actions.add_parser("collect", help="copy a run's params, metrics and plots; print the table")
    collect.add_argument("run_dir", help="the repository clone where `dvc repro` ran")
    collect.add_argument("results_dir", help="e.g. results/cifar10")
    collect.add_argument("--command-line", default="dvc repro", help="the command that made the run")
    collect.add_argument("--seconds", type=float, help="the pipeline's wall time")
    table = results_actions.add_parser("table", help="print the markdown results table of a results folder")
    table.add_argument("results_dir")
    for sub in (collect, table):
        sub.set_defaults(run=_results)
    experiments = commands.add_parser(
        "experiments", help="DVC experiments side by side: the params that differ and each model's mAP@k"
    )
    experiments.add_argument("--metric", help="a key of metrics/retrieval/<model>.json (default: map@<evaluate.k>)")
    experiments.set_defaults(run=_experiments)

    args = parser.parse_args(argv)
    if getattr(args, "k", 1) < 1:
        parser.error("--k must be at least 1")
    run_main(lambda: args.run(args))
