"""embedlab: learn, compare and serve image embeddings with a reproducible DVC pipeline."""

import os

# TensorFlow's C++ start-up chatter (CPU feature notes, missing CUDA) buries the pipeline's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
