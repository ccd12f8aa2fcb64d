"""The trained-model folder format, the one place that names its files: training writes it, evaluation
completes it, the registry stores it, serving loads it. Every layer reads it from here (never from the
layer above it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CHECKPOINT_FILE",
    "EVALUATION_FILE",
    "MEMORY_DIR",
    "MODEL_META_FILE",
    "ModelFolderError",
    "ProductionModel",
    "read_json_file",
]

CHECKPOINT_FILE = "model.pt"  # state dict + model name + config + feature spec (longrec.train.trainer)
MODEL_META_FILE = "model_meta.json"  # configs, training set, history, runtime (longrec.train.run)
EVALUATION_FILE = "evaluation.json"  # test metrics and the sample identity (longrec.eval.compare)
MEMORY_DIR = "memory"  # LMN's value-table shards + manifest (longrec.memory.sharded)


class ModelFolderError(ValueError):
    """A model folder file that is missing or unreadable; the message names it."""


def read_json_file(path: str | Path) -> dict:
    """A JSON file of a model folder, or a ModelFolderError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path} is not valid JSON: {error}") from error


@dataclass(frozen=True)
class ProductionModel:
    """The production model of a track as the registry hands it to the evaluation (which never reads the
    registry itself): its tag, folder and registered metadata, or why it could not be handed over."""

    tag: str | None
    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    unavailable: str | None = None  # e.g. an unreadable pointer or a missing version
