"""The cluster and projector stages: K-Means, 2-D maps and the TensorBoard projector export."""
