"""What a ranker service serves: one JSON file written when the service is packaged (or by `longrec
serve`), read by ``serving/service.py`` at import. Environment variables override the runtime parts.

Light on purpose (json and dataclasses only): `bentoml serve` and `bentoml build` import the service
module, which must not load anything heavy at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CONFIG_ENV", "CONFIG_FILE", "ServingConfig", "load_serving_config"]

CONFIG_ENV = "LONGREC_SERVING_CONFIG"  # path of a config file, wins over the one bundled in a Bento
CONFIG_FILE = "longrec_serving.json"  # bundled next to service.py inside a Bento
DEFAULT_SHARDS = 2


@dataclass
class ServingConfig:
    """The model (BentoML tag), its file checksums, its memory shard models, and where features live."""

    model_tag: str
    model_name: str
    model_files: dict[str, str] = field(default_factory=dict)  # {file: sha256} checked at start-up
    shard_tags: list[str] = field(default_factory=list)  # one BentoML model per memory shard (LMN)
    dataset: str | None = None
    feature_repo: str | None = None  # Feast repo folder; None = rank with empty histories
    feature_store_yaml: str | None = None  # e.g. a Redis config; default <feature_repo>/feature_store.yaml
    shard_timeout_s: float = 0.5  # deadline of one memory gather; past it the slots read as zero
    shard_retry_after_s: float = 1.0  # a failed shard is skipped this long before it is asked again
    # torch.compile the candidate-scoring path (LMN: its dense backbone part), compiled at warm-up.
    compile: bool = True
    # The ranker's intra-op threads: 0 = chosen at start-up, the faster of 1 and every usable CPU on a
    # synthetic full-length request (a second core pays for attention over C × L, not for RecBLR's head).
    # Memory shards always use one.
    torch_threads: int = 0
    # The fused attention kernel's own threads (DIN, LMN, IMN): 0 = chosen with torch_threads at start-up among
    # (1, 1), (every CPU, every CPU) and (torch 1, kernel every CPU); with torch_threads set, the same count.
    attention_threads: int = 0
    # Score each user's history cut to its valid events (rounded up to 16 positions) instead of the padded
    # L: exact, and the attention's cost follows the user's real history length. False scores all L.
    trim_history_padding: bool = True
    # DIN's, LMN's and IMN's attention over C × L through the fused CPU kernel (longrec.kernels.din_attention,
    # built on first use): same scores to ~1e-6, 2-3x faster at long L. False, or a machine where it cannot
    # be built: the torch path.
    fused_attention: bool = True
    # A/B rollout: the candidate version loaded beside the production model (no memory shards of its own),
    # and the rollout state folder whose experiment assigns users to arms and logs every request.
    candidate_tag: str | None = None
    candidate_files: dict[str, str] = field(default_factory=dict)
    rollout_dir: str | None = None  # None: no assignment, no request log (one arm, "main")

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> ServingConfig:
        return cls(**json.loads(Path(path).read_text()))

    def with_environment(self) -> ServingConfig:
        """Runtime overrides: LONGREC_FEATURE_REPO, LONGREC_FEATURE_STORE_YAML, LONGREC_SHARD_TIMEOUT_S,
        LONGREC_SERVING_COMPILE, LONGREC_TORCH_THREADS, LONGREC_ATTENTION_THREADS, LONGREC_TRIM_HISTORY,
        LONGREC_FUSED_ATTENTION, LONGREC_ROLLOUT_DIR."""
        values = asdict(self)
        if os.environ.get("LONGREC_FEATURE_REPO"):
            values["feature_repo"] = os.environ["LONGREC_FEATURE_REPO"]
        if os.environ.get("LONGREC_FEATURE_STORE_YAML"):
            values["feature_store_yaml"] = os.environ["LONGREC_FEATURE_STORE_YAML"]
        if os.environ.get("LONGREC_SHARD_TIMEOUT_S"):
            values["shard_timeout_s"] = float(os.environ["LONGREC_SHARD_TIMEOUT_S"])
        if os.environ.get("LONGREC_SERVING_COMPILE"):  # "0": eager scoring (e.g. quick test servers)
            values["compile"] = os.environ["LONGREC_SERVING_COMPILE"].lower() not in ("0", "false", "no")
        if os.environ.get("LONGREC_TORCH_THREADS"):
            values["torch_threads"] = int(os.environ["LONGREC_TORCH_THREADS"])
        if os.environ.get("LONGREC_ATTENTION_THREADS"):
            values["attention_threads"] = int(os.environ["LONGREC_ATTENTION_THREADS"])
        if os.environ.get("LONGREC_TRIM_HISTORY"):  # "0": score every user over the padded L
            values["trim_history_padding"] = os.environ["LONGREC_TRIM_HISTORY"].lower() not in (
                "0",
                "false",
                "no",
            )
        if os.environ.get("LONGREC_FUSED_ATTENTION"):  # "0": the torch attention path
            values["fused_attention"] = os.environ["LONGREC_FUSED_ATTENTION"].lower() not in (
                "0",
                "false",
                "no",
            )
        if os.environ.get("LONGREC_ROLLOUT_DIR"):  # a Bento on a cluster: the shared rollout state volume
            values["rollout_dir"] = os.environ["LONGREC_ROLLOUT_DIR"]
        return ServingConfig(**values)


def load_serving_config(bundled_dir: str | Path | None = None) -> ServingConfig | None:
    """$LONGREC_SERVING_CONFIG, else ``CONFIG_FILE`` in ``bundled_dir``; None when neither exists."""
    path = os.environ.get(CONFIG_ENV)
    if path:
        return ServingConfig.from_json(path).with_environment()
    if bundled_dir is not None and (Path(bundled_dir) / CONFIG_FILE).is_file():
        return ServingConfig.from_json(Path(bundled_dir) / CONFIG_FILE).with_environment()
    return None
