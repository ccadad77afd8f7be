"""embedlab: learn, compare and serve image embeddings with a reproducible DVC pipeline."""

import os

# TensorFlow's C++ log (CPU feature notes, missing CUDA, graph attribute notes every epoch) buries the pipeline's
# own output; errors still surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 to see it all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
