"""preprocess: data/raw -> data/prepared (resize, seeded stratified splits), reports/data.json (images per split,
classes, skipped files) and data/prepared/report.json (per class, and every skipped file by name)."""

from embedlab.core.errors import run_main
from embedlab.core.files import write_json
from embedlab.core.params import load_params
from embedlab.data.prepare import prepare


def main() -> None:
    params = load_params()
    summary = prepare("data/raw", "data/prepared", params.data)
    totals = {**summary.counts, "total": sum(summary.counts.values())}
    write_json("reports/data.json", {"images": totals, "classes": len(summary.per_class), "skipped": summary.skipped})
    print(f"preprocess: {summary.counts} at {params.data.image_size}px -> data/prepared")


if __name__ == "__main__":
    run_main(main)
