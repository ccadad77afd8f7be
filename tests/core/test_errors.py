"""How a stage reports: one line for a user error, embedlab's own log at INFO."""

from __future__ import annotations

import subprocess
import sys


def test_only_embedlab_logs_at_info_in_a_stage() -> None:
    """Stage output shows embedlab's own progress, not other libraries' INFO lines (faiss names its CPU build)."""
    script = (
        "import logging, numpy as np\n"
        "from embedlab.core.errors import run_main\n"
        "def main():\n"
        "    from embedlab.core.params import FaissParams\n"
        "    from embedlab.retrieval.index import FaissIndex\n"
        "    FaissIndex(np.eye(4, dtype='float32'), 'cosine', FaissParams(type='flat'))\n"
        "    logging.getLogger('embedlab.train.loop').info('our progress')\n"
        "    logging.getLogger('somelib').warning('a warning still shows')\n"
        "run_main(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "INFO embedlab.train.loop: our progress",
        "WARNING somelib: a warning still shows",
    ]
