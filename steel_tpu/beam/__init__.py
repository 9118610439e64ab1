"""Shard building and batch scoring as Apache Beam pipelines (the optional `[beam]` extra): Dataflow-ready."""
