"""Dataset sources (download stage) and preparation (preprocess stage)."""
