"""Shard a Kaggle-layout data set into TFRecords: a thin wrapper over `steel-tpu shards`."""

import sys

from steel_tpu.cli import main

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
