"""Model checkpoints: plain dicts (state_dict + JSON-able name, config and feature spec) that
``torch.load(weights_only=True)`` reads back, rebuilt through the model registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from longrec.data.schema import FeatureSpec
from longrec.models.base import CTRModel
from longrec.models.registry import build_model

__all__ = ["CHECKPOINT_FORMAT_VERSION", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT_VERSION = 1


def _json_roundtrip(value: Any) -> Any:
    """Force a JSON-able value (tuples → lists); what ``weights_only`` loading accepts."""
    return json.loads(json.dumps(value))


def save_checkpoint(
    path: str | Path,
    model: CTRModel,
    model_name: str | None = None,
    model_config: Any = None,
    spec: FeatureSpec | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{state_dict, model_name, model_config, spec, extra}`` with ``torch.save``; returns the path.

    Name, config and spec default to the model's own. The file is written next to its destination and
    renamed, so a crash never leaves a half-written checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model_config if model_config is not None else model.config
    spec = spec if spec is not None else model.spec
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_name": model_name or model.name,
        "model_config": _json_roundtrip(
            dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
        ),
        "spec": _json_roundtrip(dataclasses.asdict(spec)),
        "extra": _json_roundtrip(extra or {}),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CTRModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint through the registry; returns (model in eval mode, meta).

    ``meta`` holds ``model_name``, ``model_config`` (dict), ``spec`` (a ``FeatureSpec``), ``extra`` and
    ``format_version``.
    """
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format {version!r} in {path}")
    spec = FeatureSpec.from_dict(payload["spec"])
    model = build_model(payload["model_name"], spec, payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    model.to(map_location)
    model.eval()
    meta = {key: value for key, value in payload.items() if key != "state_dict"}
    meta["spec"] = spec
    return model, meta
