"""The model registry: BentoML's model store for versioned models, plus one atomic "production" pointer per
dataset that the gate moves and serving reads."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# Files of a trained model folder (written by longrec.train.run, completed by longrec.eval.compare).
CHECKPOINT_FILE = "model.pt"
MODEL_META_FILE = "model_meta.json"
EVALUATION_FILE = "evaluation.json"


class RegistryError(RuntimeError):
    """The registry is missing something or holds something inconsistent; the message says what."""


def default_registry_root() -> Path:
    """$LONGREC_REGISTRY, else $LONGREC_HOME/registry, else ./.longrec/registry."""
    if os.environ.get("LONGREC_REGISTRY"):
        return Path(os.environ["LONGREC_REGISTRY"])
    return Path(os.environ.get("LONGREC_HOME", ".longrec")) / "registry"


def dataset_slug(name: str) -> str:
    """A dataset name as BentoML tag and file names allow it."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.")
    return slug or "dataset"


def _write_json_atomically(path: Path, payload: dict) -> None:
    # Readers see either the old or the new pointer, never a torn file.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def _metadata_safe(value):
    """BentoML metadata takes only basic types: drop None values, stringify anything unusual."""
    if isinstance(value, dict):
        return {str(k): _metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_metadata_safe(v) for v in value if v is not None]
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class ModelRegistry:
    """Versioned models in a BentoML model store under `root/models`, pointers under `root/production`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_registry_root()
        self.root = self.root.resolve()
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        from bentoml._internal.models.model import ModelStore

        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(str(self.root / "models"))

    def pointer_path(self, dataset: str) -> Path:
        return self.root / "production" / f"{dataset_slug(dataset)}.json"

    def production(self, dataset: str) -> dict | None:
        """The production pointer of a dataset ({tag, model_name, metrics, ...}), or None if there is none."""
        path = self.pointer_path(dataset)
        if not path.is_file():
            return None
        try:
            pointer = json.loads(path.read_text())
            pointer["tag"]
        except (json.JSONDecodeError, KeyError) as error:
            raise RegistryError(f"production pointer {path} is unreadable: {error}") from error
        return pointer

    def model_path(self, tag: str) -> Path:
        """Folder of a stored model version."""
        import bentoml

        try:
            return Path(bentoml.models.get(tag, _model_store=self.store).path)
        except bentoml.exceptions.NotFound as error:
            raise RegistryError(f"model {tag} is not in the registry at {self.root}") from error

    def production_model_dir(self, dataset: str) -> Path | None:
        """Folder of the production model of a dataset, or None."""
        pointer = self.production(dataset)
        return self.model_path(pointer["tag"]) if pointer else None

    def register(self, model_dir: str | Path, dataset_dir: str | Path) -> str:
        """Copy a trained (and evaluated) model folder into the store; returns its tag. Nothing is stored if
        any file is missing or unreadable (BentoML saves only when the block completes)."""
        import bentoml

        model_dir, dataset_dir = Path(model_dir), Path(dataset_dir)
        meta = self._read_json(model_dir / MODEL_META_FILE)
        evaluation = self._read_json(model_dir / EVALUATION_FILE)
        dataset = self._read_json(dataset_dir / "dataset.json")
        if not (model_dir / CHECKPOINT_FILE).is_file():
            raise RegistryError(f"{model_dir} has no {CHECKPOINT_FILE}")
        name = f"longrec-{dataset_slug(dataset['name'])}-{meta['model_name']}"
        metadata = {
            "model_name": meta["model_name"],
            "model_config": meta.get("model_config", {}),
            "feature_spec": meta.get("feature_spec", {}),
            "train_config": meta.get("train_config", {}),
            "training_set": meta.get("training_set", {}),
            "test_metrics": evaluation.get("test_metrics", {}),
            "valid_metrics": meta.get("valid_metrics", {}),
            "dataset": dataset["name"],
            "dataset_fingerprint": dataset["fingerprint"],
            "test_set_fingerprint": evaluation.get("test_set_fingerprint"),
        }
        labels = {"dataset": dataset_slug(dataset["name"]), "model": meta["model_name"], "stage": "candidate"}
        metadata = _metadata_safe(metadata)
        with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=self.store) as model:
            for entry in model_dir.iterdir():
                if entry.is_dir():  # e.g. LMN's memory shards
                    shutil.copytree(entry, Path(model.path) / entry.name)
                else:
                    shutil.copy2(entry, Path(model.path) / entry.name)
            tag = str(model.tag)
        logger.info("registered %s", tag)
        return tag

    def promote(self, tag: str, dataset: str, reason: str = "") -> dict:
        """Point the dataset's production pointer at `tag` (atomically) and log it in history.jsonl."""
        import bentoml

        model = bentoml.models.get(tag, _model_store=self.store)
        previous = self.production(dataset)
        pointer = {
            "tag": tag,
            "dataset": dataset,
            "model_name": model.info.metadata.get("model_name"),
            "test_metrics": model.info.metadata.get("test_metrics", {}),
            "test_set_fingerprint": model.info.metadata.get("test_set_fingerprint"),
            "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "previous": previous["tag"] if previous else None,
            "reason": reason,
        }
        _write_json_atomically(self.pointer_path(dataset), pointer)
        with open(self.root / "production" / "history.jsonl", "a") as history:
            history.write(json.dumps(pointer) + "\n")
        logger.info("production for %s -> %s (was %s)", dataset, tag, pointer["previous"])
        return pointer

    def register_and_promote(self, model_dir: str | Path, dataset_dir: str | Path) -> str:
        """register() then promote(): the pipeline's last step after the gate said promote."""
        tag = self.register(model_dir, dataset_dir)
        dataset = self._read_json(Path(dataset_dir) / "dataset.json")["name"]
        self.promote(tag, dataset, reason="passed the AUC gate")
        return tag

    def list_models(self) -> list[dict]:
        """Every stored version with its tag, labels and test AUC."""
        return [
            {
                "tag": str(model.tag),
                "labels": dict(model.info.labels),
                "test_auc": model.info.metadata.get("test_metrics", {}).get("auc"),
                "created": str(model.info.creation_time),
            }
            for model in self.store.list()
        ]

    @staticmethod
    def _read_json(path: Path) -> dict:
        if not path.is_file():
            raise RegistryError(f"missing {path}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RegistryError(f"{path} is not valid JSON: {error}") from error
