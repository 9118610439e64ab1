"""Configs: the schema (shared data, augment and train sections; a classifier and a segmenter config), the presets,
`--set` overrides and config.json's form. Importable without TensorFlow."""

from steel_tpu.config.overrides import FORMAT, apply_overrides, from_dict, from_json_doc, to_dict, to_json
from steel_tpu.config.presets import PRESETS, SYSTEMS, TINY_SCALE, check_presets, members_of, preset
from steel_tpu.config.schema import (TASKS, AugmentConfig, ClassifierModel, ClassifyConfig, Config, DataConfig,
                                     SegmentConfig, SegmenterModel, TrainConfig, check_folds)

__all__ = ["FORMAT", "PRESETS", "SYSTEMS", "TASKS", "TINY_SCALE", "AugmentConfig", "ClassifierModel", "ClassifyConfig",
           "Config", "DataConfig", "SegmentConfig", "SegmenterModel", "TrainConfig", "apply_overrides",
           "check_folds", "check_presets", "from_dict", "from_json_doc", "members_of", "preset", "to_dict",
           "to_json"]
