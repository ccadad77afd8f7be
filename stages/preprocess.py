"""preprocess: data/raw -> data/prepared (resize, seeded stratified splits) and metrics/data.json."""

from embedlab.data.prepare import prepare
from embedlab.data.raw import RawDataset
from embedlab.errors import run_main
from embedlab.fsutil import write_json
from embedlab.params import load_params

MAX_LISTED_SKIPS = 50


def main() -> None:
    params = load_params()
    summary = prepare("data/raw", "data/prepared", params.data)
    skipped = RawDataset.open("data/raw").skipped
    write_json(
        "metrics/data.json",
        {
            "images": {**summary.counts, "total": sum(summary.counts.values())},
            "per_class": summary.per_class,
            "skipped": len(skipped),
            "skipped_files": skipped[:MAX_LISTED_SKIPS],
        },
    )
    print(f"preprocess: {summary.counts} at {params.data.image_size}px -> data/prepared")


if __name__ == "__main__":
    run_main(main)
