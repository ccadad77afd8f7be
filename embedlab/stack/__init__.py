"""The stack stage: the fitted stacker's format (stacker.py, NumPy only) and its fitting (fit.py, network.py)."""
