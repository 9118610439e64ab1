"""Training: the K-fold loop (train), the weight average (averaging) and host memory figures (memory)."""
