"""User-facing errors: stages and the CLI print these as one line and exit non-zero, without a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Something the user can fix (a param, a path, the network); the message says what and how."""


def require_output(path: str | Path, stage: str) -> Path:
    """``path``, or a :class:`UserError` naming the DVC stage that makes it: the one message every reader of a
    pipeline output gives when the output is missing."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path} is missing: run `dvc repro {stage}` (or `dvc pull {stage}` to fetch it from the remote)"
        )
    return path


def run_main(main: Callable[[], object]) -> None:
    """Run a stage or command entry point, turning a :class:`UserError` into one line on stderr and exit 2."""
    # embedlab's own progress at INFO; other libraries only when they warn (faiss logs its CPU build at INFO)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedlab").setLevel(logging.INFO)
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
