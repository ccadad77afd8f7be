"""The train@<backbone> stage: the run loop (loop.py) and what sits beside it."""
