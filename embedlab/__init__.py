"""embedlab: learn, compare and serve image embeddings with a reproducible DVC pipeline.

Importing any part of the package first fixes how TensorFlow will run (see :mod:`embedlab.core.runtime`): this file runs
before any stage, the CLI, a benchmark or a test can import TensorFlow.
"""

from embedlab.core.runtime import configure_tensorflow_environment

configure_tensorflow_environment()

__version__ = "0.1.0"
