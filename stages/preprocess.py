"""preprocess: data/raw -> data/prepared (resize, seeded stratified splits), metrics/data.json (the totals a user
compares) and data/prepared/report.json (per-class counts and skipped files: too many columns for a metric)."""

from embedlab.data.prepare import prepare
from embedlab.errors import run_main
from embedlab.fsutil import write_json
from embedlab.params import load_params


def main() -> None:
    params = load_params()
    summary = prepare("data/raw", "data/prepared", params.data)
    totals = {**summary.counts, "total": sum(summary.counts.values())}
    write_json("metrics/data.json", {"images": totals, "classes": len(summary.per_class), "skipped": summary.skipped})
    print(f"preprocess: {summary.counts} at {params.data.image_size}px -> data/prepared")


if __name__ == "__main__":
    run_main(main)
