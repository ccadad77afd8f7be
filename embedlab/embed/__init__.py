"""The embed@<backbone> stage: every prepared image through a trained model, and the embeddings file format."""
