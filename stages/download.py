"""download: data.source -> data/raw (digits bundled offline, CIFAR-10 binary over HTTP, or an image folder)."""

from embedlab.core.errors import run_main
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.download import fetch


def main() -> None:
    params = load_params()
    paths = Layout()
    count = fetch(params.data, paths.raw)
    print(f"download: {count} images from {params.data.source} -> {paths.raw}")


if __name__ == "__main__":
    run_main(main)
