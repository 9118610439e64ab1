"""SHIM for the workdir branch only (the shardfolder branch's real module replaces it): the ShardFolder API train uses."""

import json

from steel_tpu import storage
from steel_tpu.data.example import MANIFEST


class ShardFolder:
    def __init__(self, path, manifest):
        self.path, self.manifest = str(path), manifest
        self.split, self.num_folds, self.entries = manifest["split"], manifest["folds"], manifest["shards"]

    def __str__(self):  # lets today's pipeline.steps_per_epoch(path) read the manifest
        return self.path

    @classmethod
    def open(cls, shards):
        path = storage.join(shards, MANIFEST)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: not found: not a shard folder")
        return cls(shards, json.loads(storage.read_text(path)))

    def check(self):
        pass

    def files(self, folds=None):
        return [storage.join(self.path, e["name"]) for e in self.entries if folds is None or e["fold"] in folds]
