"""Model names → (config dataclass, model class) for both tasks, and construction from plain dicts (CLI,
checkpoints, experiments). One pattern: this module imports the model modules and lists them; the model
modules never import it, so there is no registration side effect and no import cycle."""

from __future__ import annotations

import dataclasses
from typing import Any

from longrec.data.schema import FeatureSpec
from longrec.models.base import CTRModel
from longrec.models.din import DIN, DINConfig
from longrec.models.imn import IMN, IMNConfig
from longrec.models.lmn import LMN, LMNConfig
from longrec.models.recblr import RecBLR, RecBLRConfig, RecBLRNextItem, RecBLRNextItemConfig
from longrec.models.sasrec import SASRec, SASRecConfig
from longrec.models.sequential import SequentialRecommender

__all__ = [
    "MODEL_REGISTRY",
    "NEXT_ITEM_REGISTRY",
    "available_models",
    "available_next_item_models",
    "build_model",
    "build_sequential_model",
    "model_config_from_dict",
    "register_model",
]

MODEL_REGISTRY: dict[str, tuple[type, type[CTRModel]]] = {
    DIN.name: (DINConfig, DIN),
    LMN.name: (LMNConfig, LMN),
    IMN.name: (IMNConfig, IMN),
    RecBLR.name: (RecBLRConfig, RecBLR),
}


# Next-item (full-ranking) models, by the same pattern.
NEXT_ITEM_REGISTRY: dict[str, tuple[type, type[SequentialRecommender]]] = {
    RecBLRNextItem.name: (RecBLRNextItemConfig, RecBLRNextItem),
    SASRec.name: (SASRecConfig, SASRec),
}


def register_model(config_class: type, model_class: type[CTRModel]) -> None:
    """Add a model under ``model_class.name`` (refuses to silently replace another one)."""
    existing = MODEL_REGISTRY.get(model_class.name)
    if existing is not None and existing != (config_class, model_class):
        raise ValueError(f"model name {model_class.name!r} is already registered")
    MODEL_REGISTRY[model_class.name] = (config_class, model_class)


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODEL_REGISTRY)


def available_next_item_models() -> list[str]:
    """Registered next-item model names, sorted."""
    return sorted(NEXT_ITEM_REGISTRY)


def _lookup(name: str, registry: dict | None = None) -> tuple[type, type]:
    registry = MODEL_REGISTRY if registry is None else registry
    key = name.lower()
    if key not in registry:
        kind = "model" if registry is MODEL_REGISTRY else "next-item model"
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(sorted(registry))}")
    return registry[key]


def model_config_from_dict(
    name: str, data: dict[str, Any] | None = None, registry: dict | None = None
) -> Any:
    """The config dataclass of model ``name`` with ``data`` overriding its defaults.

    Unknown keys raise a ``ValueError`` naming the valid ones; JSON lists become tuples where the default
    is a tuple, so configs survive a JSON round trip.
    """
    config_class, _ = _lookup(name, registry)
    data = dict(data or {})
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {name} config keys {unknown}; valid keys: {', '.join(fields)}")
    defaults = config_class()
    for key, value in data.items():
        if isinstance(getattr(defaults, key), tuple) and isinstance(value, list):
            data[key] = tuple(value)
    return config_class(**data)


def build_model(
    name: str, spec: FeatureSpec, config_overrides: dict[str, Any] | Any | None = None
) -> CTRModel:
    """Construct model ``name`` for ``spec``; ``config_overrides`` is a dict of fields (or a config)."""
    config_class, model_class = _lookup(name)
    if isinstance(config_overrides, config_class):
        config = config_overrides
    elif config_overrides is None or isinstance(config_overrides, dict):
        config = model_config_from_dict(name, config_overrides)
    else:
        raise TypeError(
            f"config_overrides must be a dict or {config_class.__name__}, got {type(config_overrides)}"
        )
    return model_class(spec, config)


def build_sequential_model(
    name: str, n_items: int, max_history_length: int, overrides: dict[str, Any] | None = None
) -> SequentialRecommender:
    """Next-item model ``name`` ("recblr" | "sasrec") with config fields overridden by ``overrides``."""
    _, model_class = _lookup(name, NEXT_ITEM_REGISTRY)
    config = model_config_from_dict(name, overrides, NEXT_ITEM_REGISTRY)
    return model_class(n_items, max_history_length, config)
