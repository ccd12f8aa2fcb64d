"""Package a registered model for serving: its memory as one BentoML model per shard, a serving config
with the files' checksums, and a Bento built offline (`bentoml build`) whose tag is recorded next to the
production pointer (``<registry>/production/<dataset>.bento.json``).

The registry root doubles as BENTOML_HOME: its ``models/`` is the registry's model store, and Bentos
land in its ``bentos/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from longrec.serving.config import CONFIG_FILE, DEFAULT_SHARDS, ServingConfig
from longrec.serving.ranker import file_manifest

__all__ = [
    "bento_environment",
    "build_bento",
    "package_production",
    "prepare_serving",
    "read_bento_record",
    "write_bento_record",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_FILE = REPO_ROOT / "serving" / "service.py"
MEMORY_DIR = "memory"
# Packages the service imports, pinned to the versions of this environment (constraints.txt).
BENTO_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "feast", "bentoml", "pydantic", "safetensors",
                  "redis", "prometheus-client", "pyyaml")  # fmt: skip


def bento_environment(registry_root: str | Path) -> dict[str, str]:
    """Environment for `bentoml` commands on this registry (its root is BENTOML_HOME)."""
    env = dict(os.environ)
    env["BENTOML_HOME"] = str(Path(registry_root).resolve())
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _shard_models(registry_root: Path, model_tag: str, memory_dir: Path, n_shards: int) -> list[str]:
    """One BentoML model per shard (manifest, keys, its own value file), re-split to ``n_shards``."""
    from longrec.memory import load_memory_shards, save_memory_shards
    from longrec.registry.bento_models import create_model, find_model

    name, _, version = model_tag.partition(":")
    tags = [f"{name}-memory-shard{i}-of-{n_shards}:{version}" for i in range(n_shards)]
    if all(find_model(registry_root, tag) is not None for tag in tags):
        return tags  # made by an earlier packaging of this version
    sharded = load_memory_shards(memory_dir)  # every file checked against the training manifest
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = save_memory_shards(sharded, Path(tmp) / "all", n_shards)
        manifest = json.loads(manifest_path.read_text())
        for entry, tag in zip(manifest["shards"], tags, strict=True):
            if find_model(registry_root, tag) is not None:
                continue
            folder = Path(tmp) / f"shard{entry['index']}"
            folder.mkdir()
            for file in (manifest_path.name, manifest["keys"]["file"], entry["file"]):
                shutil.copy2(manifest_path.parent / file, folder / file)
            create_model(
                registry_root,
                tag,
                folder,
                {"role": "memory-shard", "shard": str(entry["index"]), "model": name},
                {"model_tag": model_tag, "start": entry["start"], "stop": entry["stop"]},
            )
    logger.info("memory of %s as %d shard models", model_tag, n_shards)
    return tags


def prepare_serving(
    registry_root: str | Path,
    model_tag: str,
    n_shards: int = DEFAULT_SHARDS,
    feature_repo: str | Path | None = None,
    dataset: str | None = None,
) -> ServingConfig:
    """The serving config of a registered model; creates its shard models first if it has a memory."""
    from longrec.registry.store import ModelRegistry

    registry_root = Path(registry_root).resolve()
    model_dir = ModelRegistry(registry_root).model_path(model_tag)
    meta = json.loads((model_dir / "model_meta.json").read_text())
    shard_tags: list[str] = []
    if (model_dir / MEMORY_DIR).is_dir():
        shard_tags = _shard_models(registry_root, model_tag, model_dir / MEMORY_DIR, n_shards)
    return ServingConfig(
        model_tag=model_tag,
        model_name=meta["model_name"],
        model_files=file_manifest(model_dir),
        shard_tags=shard_tags,
        dataset=dataset,
        feature_repo=str(Path(feature_repo).resolve()) if feature_repo else None,
    )


def _pinned_packages() -> list[str]:
    pins = []
    for name in BENTO_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+')[0]}")  # local labels (+cpu) are not on the index
    return pins


def build_bento(registry_root: str | Path, config: ServingConfig, name: str | None = None) -> str:
    """`bentoml build` (offline) of the ranker for ``config``; returns the Bento tag."""
    import yaml

    registry_root = Path(registry_root).resolve()
    name = name or f"longrec-ranker-{config.model_tag.partition(':')[0].removeprefix('longrec-')}"
    with tempfile.TemporaryDirectory(prefix="bento-ctx-") as tmp:
        context = Path(tmp)
        shutil.copy2(SERVICE_FILE, context / "service.py")
        config.to_json(context / CONFIG_FILE)
        shutil.copytree(
            REPO_ROOT / "longrec", context / "longrec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        bentofile = {
            "service": "service:Ranker",
            "name": name,
            "labels": {"project": "longrec", "model_tag": config.model_tag.replace(":", "-")},
            "include": ["service.py", CONFIG_FILE, "longrec/**"],
            "python": {"packages": _pinned_packages(), "lock_packages": False},
        }
        (context / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", "-o", "tag", "."],
            cwd=context,
            env=bento_environment(registry_root),
            capture_output=True,
            text=True,
            timeout=600,
        )
    if result.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    tag = next(
        (line.split("__tag__:", 1)[1].strip() for line in result.stdout.splitlines() if "__tag__:" in line),
        None,
    )
    if tag is None:
        raise RuntimeError(f"bentoml build printed no tag:\n{result.stdout[-2000:]}")
    logger.info("built Bento %s", tag)
    return tag


def _record_path(registry_root: Path, dataset: str) -> Path:
    from longrec.registry.store import dataset_slug

    return registry_root / "production" / f"{dataset_slug(dataset)}.bento.json"


def write_bento_record(registry_root: str | Path, dataset: str, record: dict) -> Path:
    """Write ``<registry>/production/<dataset>.bento.json`` atomically (temp file, fsync, rename)."""
    path = _record_path(Path(registry_root).resolve(), dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(record, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    return path


def read_bento_record(registry_root: str | Path, dataset: str) -> dict | None:
    """The Bento built for a dataset's production model, or None."""
    path = _record_path(Path(registry_root).resolve(), dataset)
    return json.loads(path.read_text()) if path.is_file() else None


def package_production(
    registry_root: str | Path,
    track: str,
    feature_repo: str | Path | None = None,
    n_shards: int = DEFAULT_SHARDS,
    model_tag: str | None = None,
) -> dict:
    """Build the Bento of a track's production model (or of ``model_tag``) and record it next to the
    production pointer.

    A copy of the Feast repo goes under ``<registry>/features/`` so the Bento's config points at a folder
    that outlives the pipeline run (override it at serve time with $LONGREC_FEATURE_REPO).
    """
    from longrec.registry.store import ModelRegistry, dataset_slug

    registry_root = Path(registry_root).resolve()
    if model_tag is None:
        pointer = ModelRegistry(registry_root).production(track)
        if pointer is None:
            raise RuntimeError(f"no production model for {track} in {registry_root}")
        model_tag = pointer["tag"]
    served_repo = None
    if feature_repo:
        served_repo = registry_root / "features" / f"{dataset_slug(track)}-{model_tag.partition(':')[2]}"
        if not served_repo.is_dir():
            tmp = served_repo.with_name(served_repo.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(feature_repo, tmp)
            os.replace(tmp, served_repo)
    config = prepare_serving(registry_root, model_tag, n_shards, served_repo, track)
    bento_tag = build_bento(registry_root, config)
    record = {
        "model_tag": model_tag,
        "bento_tag": bento_tag,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_name": config.model_name,
        "shard_tags": config.shard_tags,
        "feature_repo": config.feature_repo,
    }
    write_bento_record(registry_root, track, record)
    logger.info("Bento %s for %s recorded for %s", bento_tag, model_tag, track)
    return record
