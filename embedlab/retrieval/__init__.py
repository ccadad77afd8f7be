"""The evaluate stage: exact and faiss search, the retrieval metrics, the linear probe, collages."""
