"""The registry's model versions as a BentoML model store, through BentoML's public API only.

The registry root is a BentoML home: versions live in ``<root>/models/<name>/<version>/`` (BentoML's own
layout, so a Bento built with ``BENTOML_HOME=<root>`` finds them by tag). BentoML fixes its home once per
process, so a version is written with ``bentoml.models.create`` in this process when ``BENTOML_HOME`` is the
registry root (the register component sets it), else in a short child process with ``BENTOML_HOME=<root>``
(tests and tools that hold several registries). Reads go straight to the on-disk layout (``model.yaml``), which needs
no BentoML import at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["StoredModel", "create_model", "find_model", "list_stored_models"]


class StoreError(RuntimeError):
    """A model version that cannot be written or read; the message says which and why."""


@dataclass(frozen=True)
class StoredModel:
    """One stored model version as BentoML wrote it."""

    tag: str
    path: Path
    labels: dict
    metadata: dict
    creation_time: str


def _read_version(folder: Path) -> StoredModel:
    try:
        info = yaml.safe_load((folder / "model.yaml").read_text())
        tag = f"{info['name']}:{info['version']}"
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise StoreError(f"model version {folder} has an unreadable model.yaml: {error}") from error
    return StoredModel(
        tag=tag,
        path=folder,
        labels=dict(info.get("labels") or {}),
        metadata=dict(info.get("metadata") or {}),
        creation_time=str(info.get("creation_time", "")),
    )


def find_model(home: Path, tag: str) -> StoredModel | None:
    """The stored version `name:version` (or `name:latest`), or None when there is none."""
    name, _, version = tag.partition(":")
    if not name or "/" in name or "/" in version or name.startswith("."):
        return None
    folder = home / "models" / name
    if not version or version == "latest":
        latest = folder / "latest"
        if not latest.is_file():
            return None
        version = latest.read_text().strip()
    folder = folder / version
    if not (folder / "model.yaml").is_file():
        return None
    return _read_version(folder)


def list_stored_models(home: Path) -> list[StoredModel]:
    """Every stored version, oldest first."""
    models = [_read_version(p.parent) for p in sorted((home / "models").glob("*/*/model.yaml"))]
    return sorted(models, key=lambda m: m.creation_time)


def _bentoml_home_is(home: Path) -> bool:
    configured = os.environ.get("BENTOML_HOME")
    return configured is not None and Path(configured).resolve() == home.resolve()


def _create_here(name: str, source: Path, labels: dict, metadata: dict) -> str:
    import shutil

    import bentoml

    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for entry in source.iterdir():
            target = Path(model.path) / entry.name
            if entry.is_dir():  # e.g. LMN's memory shards
                shutil.copytree(entry, target)
            else:
                shutil.copy2(entry, target)
        return str(model.tag)


def create_model(home: Path, name: str, source: Path, labels: dict, metadata: dict) -> str:
    """Store every file of `source` as a new version of `name`; returns its tag. All or nothing: BentoML
    moves the version into the store only when the block completes."""
    home.mkdir(parents=True, exist_ok=True)
    if _bentoml_home_is(home):
        return _create_here(name, source, labels, metadata)
    payload = json.dumps({"name": name, "source": str(source), "labels": labels, "metadata": metadata})
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run(
        [sys.executable, "-m", "longrec.registry.bento_models"],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise StoreError(f"storing {name} in {home} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip().splitlines()[-1]


if __name__ == "__main__":  # child process of create_model: BENTOML_HOME is the registry root
    request = json.loads(sys.stdin.read())
    print(_create_here(request["name"], Path(request["source"]), request["labels"], request["metadata"]))
