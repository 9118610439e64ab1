"""Severstal image geometry and class count, shared by every module."""

HEIGHT = 256
WIDTH = 1600
CHANNELS = 3
NUM_CLASSES = 4
CLASS_IDS = (1, 2, 3, 4)
