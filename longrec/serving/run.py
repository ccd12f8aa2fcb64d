"""`longrec serve` and the end of `make run`: serve a registered model locally (its Bento when one was
built for it, else the service module with a generated config), and send a few real requests."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longrec.serving.config import DEFAULT_SHARDS, ServingConfig
from longrec.serving.package import prepare_serving, read_bento_record
from longrec.serving.process import ServeProcess

__all__ = ["ServeTarget", "resolve_target", "showcase"]

logger = logging.getLogger(__name__)


@dataclass
class ServeTarget:
    """What to serve: a Bento tag, or a serving config for the service module."""

    model_tag: str
    bento_tag: str | None = None
    config: ServingConfig | None = None
    rollout_dir: str | None = None  # a Bento reads it from LONGREC_ROLLOUT_DIR (a config carries it)

    def process(
        self, registry_root: str | Path, port: int, host: str = "127.0.0.1", **kwargs
    ) -> ServeProcess:
        if self.bento_tag and self.rollout_dir:
            kwargs["extra_env"] = {"LONGREC_ROLLOUT_DIR": self.rollout_dir, **kwargs.get("extra_env", {})}
        return ServeProcess(
            registry_root, port, config=self.config, bento_tag=self.bento_tag, host=host, **kwargs
        )


def resolve_target(
    registry_root: str | Path,
    tag: str | None = None,
    dataset: str | None = None,
    feature_repo: str | Path | None = None,
    feature_store_yaml: str | Path | None = None,
    n_shards: int = DEFAULT_SHARDS,
    shard_timeout_s: float | None = None,
    use_bento: bool = True,
    rollout_dir: str | Path | None = None,
) -> ServeTarget:
    """The production model of ``dataset`` (its recorded Bento if built for it) or the model ``tag``.

    Served by dataset, the ranker logs every request to the rollout's request log, and when an A/B
    experiment runs on the dataset it loads the candidate beside production and serves users by arm
    (then always through the service module with a generated config, which names both models).
    """
    from longrec.registry.store import ModelRegistry, RegistryError
    from longrec.rollout.state import ExperimentStore, default_rollout_dir

    if (tag is None) == (dataset is None):
        raise ValueError("give exactly one of --tag and --dataset")
    registry = ModelRegistry(registry_root)
    record = None
    if dataset is not None:
        pointer = registry.production(dataset)
        if pointer is None:
            raise RegistryError(f"no production model for {dataset!r} in {registry.root}")
        tag = pointer["tag"]
        record = read_bento_record(registry.root, dataset)
        if record is not None and record.get("model_tag") != tag:
            record = None  # built for an earlier production model
    registry.model_path(tag)  # RegistryError naming the tag if it is not stored
    experiment = None
    if dataset is not None:
        rollout_dir = Path(rollout_dir or default_rollout_dir()).resolve()
        store = ExperimentStore(rollout_dir)
        experiment = store.active(dataset)
        store.close()
        if experiment is not None:  # the experiment names both arms: its control is served as "main"
            tag = experiment.control_tag
            registry.model_path(tag)
    overrides = feature_repo or feature_store_yaml or shard_timeout_s is not None or experiment is not None
    if (
        use_bento
        and record is not None
        and not overrides
        and len(record.get("shard_tags", [])) in (0, n_shards)
    ):
        return ServeTarget(tag, bento_tag=record["bento_tag"], rollout_dir=str(rollout_dir))
    repo = feature_repo or (record or {}).get("feature_repo")
    config = prepare_serving(registry.root, tag, n_shards, repo, dataset)
    if feature_store_yaml:
        config.feature_store_yaml = str(Path(feature_store_yaml).resolve())
    if shard_timeout_s is not None:
        config.shard_timeout_s = shard_timeout_s
    if dataset is not None:
        config.rollout_dir = str(rollout_dir)
    if experiment is not None:
        from longrec.serving.ranker import file_manifest

        config.candidate_tag = experiment.candidate_tag
        config.candidate_files = file_manifest(registry.model_path(experiment.candidate_tag))
    return ServeTarget(tag, config=config)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def showcase(
    registry_root: str | Path,
    dataset: str,
    training_set_dir: str | Path,
    port: int = 3971,
    n_users: int = 5,
    repeats: int = 10,
    echo=print,
) -> dict:
    """Serve the production model, rank each of ``n_users`` test-period users' test candidates
    ``repeats`` times, print their top items and the p50/p99 latency, and stop the service."""
    import httpx

    from longrec.data.training_set import read_training_set

    frame, _, _ = read_training_set(training_set_dir)
    test = frame[frame["split"] == "test"]
    users = test["user_id"].drop_duplicates().head(n_users).tolist()
    target = resolve_target(registry_root, dataset=dataset)
    what = f"Bento {target.bento_tag}" if target.bento_tag else "serving/service.py"
    echo(f"serving {target.model_tag} ({what}) on 127.0.0.1:{port} ...")
    started = time.perf_counter()
    latencies: list[float] = []
    shown = []
    with target.process(registry_root, port) as server:
        echo(f"ready in {time.perf_counter() - started:.1f} s")
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for user in users:
                rows = test[test["user_id"] == user]
                body = {
                    "user_id": int(user),
                    "candidate_items": [int(i) for i in rows["target_item"].drop_duplicates()],
                    "top_k": 3,
                    "timestamp": int(rows["target_timestamp"].min()),
                }
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    response = client.post("/rank", json=body)
                    latencies.append(time.perf_counter() - t0)
                    response.raise_for_status()
                result = response.json()
                positives = set(rows.loc[rows["label"] == 1, "target_item"].tolist())
                top = ", ".join(
                    f"{i['item_id']}{'*' if i['item_id'] in positives else ''} ({i['score']:.3f})"
                    for i in result["items"]
                )
                flags = [f for f in ("unknown_user", "feature_fallback", "degraded_memory") if result[f]]
                echo(f"  user {user}: {len(body['candidate_items'])} candidates -> top {top}"
                     + (f"  [{', '.join(flags)}]" if flags else ""))  # fmt: skip
                shown.append({"user_id": int(user), "top": result["items"], "flags": flags})
    p50, p99 = _percentile(latencies, 50) * 1000, _percentile(latencies, 99) * 1000
    echo(f"  {len(latencies)} requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms (* = the user's held-out item)")
    echo("service stopped")
    return {"model_tag": target.model_tag, "bento_tag": target.bento_tag, "p50_ms": p50, "p99_ms": p99,
            "requests": len(latencies), "users": shown}  # fmt: skip


def showcase_run(run_dir: str | Path, registry_root: str | Path, echo=print, **kwargs) -> dict | None:
    """``showcase`` for a finished `longrec run`: its track and test split from the run's task outputs.

    None (and a line saying why) when the run left no training set or the track has no production model.
    """
    import json

    from longrec.registry.store import ModelRegistry

    kfp_root = Path(run_dir) / "kfp"
    dataset_files = sorted(kfp_root.rglob("ingest-dataset/events/dataset.json"))
    training_sets = sorted(kfp_root.rglob("build-training-set/training_set"))
    if not dataset_files or not training_sets:
        echo("serving: the run left no training set; nothing to serve")
        return None
    dataset = json.loads(dataset_files[0].read_text())
    track = dataset.get("track", dataset["name"])
    if ModelRegistry(registry_root).production(track) is None:
        echo(f"serving: no production model for {track}; nothing to serve")
        return None
    return showcase(registry_root, track, training_sets[0], echo=echo, **kwargs)
