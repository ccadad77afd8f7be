"""preprocess: data/raw -> data/prepared (resize, seeded stratified splits), reports/data.json (images per split,
classes, skipped files) and data/prepared/report.json (per class, and every skipped file by name)."""

from embedlab.core.errors import run_main
from embedlab.core.files import write_json
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepare import prepare


def main() -> None:
    params = load_params()
    paths = Layout()
    summary = prepare(paths.raw, paths.prepared, params.data)
    totals = {**summary.counts, "total": sum(summary.counts.values())}
    write_json(paths.data_report, {"images": totals, "classes": len(summary.per_class), "skipped": summary.skipped})
    print(f"preprocess: {summary.counts} at {params.data.image_size}px -> {paths.prepared}")


if __name__ == "__main__":
    run_main(main)
