"""The model registry: versioned models in a BentoML model store, plus one production pointer per dataset
track that the gate, the rollout and operators move — by compare-and-swap, under a lock, with a journal.

Layout of a registry root (a BentoML home, so Bentos built against it find the models by tag):

    models/<name>/<version>/       BentoML model versions (model.pt, model_meta.json, evaluation.json, ...)
    production/<track>.json        the production pointer of one track (a dataset, or a slice of one)
    production/<track>.intent.json a pointer move in progress (present only while one runs or after a crash)
    production/history.jsonl       every pointer move, append-only: who, why, from what, to what
    production/.lock               serialises every pointer change and history append

A track is the dataset name, or ``name@slice`` for a smoke run on part of it (``--max-events``), so a slice
can never move the full dataset's pointer.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from longrec.model_files import (
    CHECKPOINT_FILE,
    EVALUATION_FILE,
    MODEL_META_FILE,
    ModelFolderError,
    ProductionModel,
    read_json_file,
)
from longrec.registry.bento_models import StoreError, create_model, find_model, list_stored_models

logger = logging.getLogger(__name__)


HISTORY_FILE = "history.jsonl"
# Tests set this to a point name to SIGKILL the process there ("after_intent", "after_pointer").
CRASH_POINT_ENV = "LONGREC_REGISTRY_CRASH_AT"


class RegistryError(RuntimeError):
    """The registry is missing something or holds something inconsistent; the message says what."""


class PointerMoved(RegistryError):
    """Compare-and-swap failed: production no longer points where the caller saw it."""


class _Unset:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Unset()  # promote() without a compare-and-swap expectation


def default_registry_root() -> Path:
    """$LONGREC_REGISTRY, else $LONGREC_HOME/registry, else ./.longrec/registry."""
    if os.environ.get("LONGREC_REGISTRY"):
        return Path(os.environ["LONGREC_REGISTRY"])
    return Path(os.environ.get("LONGREC_HOME", ".longrec")) / "registry"


def dataset_slug(name: str) -> str:
    """A dataset name (or track) as BentoML tag and file names allow it."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.")
    return slug or "dataset"


def default_actor() -> str:
    """Who moved a pointer, when the caller does not say: user@host, or the KFP pod name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path: Path, payload: dict) -> None:
    # Readers see either the old or the new file, never a torn one, also after a power cut.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    _fsync_dir(path.parent)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _metadata_safe(value):
    """BentoML metadata takes only basic types: drop None values, stringify anything unusual."""
    if isinstance(value, dict):
        return {str(k): _metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_metadata_safe(v) for v in value if v is not None]
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ModelRegistry:
    """Versioned models under `root/models` (a BentoML store), production pointers under `root/production`."""

    def __init__(self, root: str | Path | None = None):
        self.root = (Path(root) if root else default_registry_root()).resolve()
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        (self.root / "production").mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- pointers
    def pointer_path(self, track: str) -> Path:
        return self.root / "production" / f"{dataset_slug(track)}.json"

    def _intent_path(self, track: str) -> Path:
        return self.root / "production" / f"{dataset_slug(track)}.intent.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / "production" / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the holder dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_pointer(self, track: str) -> dict | None:
        path = self.pointer_path(track)
        if not path.is_file():
            return None
        try:
            pointer = json.loads(path.read_text())
            pointer["tag"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise RegistryError(f"production pointer {path} is unreadable: {error}") from error
        return pointer

    def production(self, track: str) -> dict | None:
        """The production pointer of a track ({tag, model_name, test_metrics, ...}), or None."""
        if self._intent_path(track).is_file():
            with self._locked():
                self._recover(track)
        return self._read_pointer(track)

    def production_tag(self, track: str) -> str | None:
        pointer = self.production(track)
        return pointer["tag"] if pointer else None

    def production_model(self, track: str) -> ProductionModel | None:
        """The production model of a track for the evaluation, None when the track has none; a pointer or
        version that cannot be read comes back as `unavailable` with the reason (never as "none")."""
        try:
            pointer = self.production(track)
        except RegistryError as error:
            return ProductionModel(None, unavailable=f"the production pointer is unreadable: {error}")
        if pointer is None:
            return None
        try:
            stored = self.stored(pointer["tag"])
        except RegistryError as error:
            return ProductionModel(pointer["tag"], unavailable=str(error))
        return ProductionModel(pointer["tag"], stored.path, stored.metadata)

    def production_model_dir(self, track: str) -> Path | None:
        """Folder of the production model of a track, or None."""
        pointer = self.production(track)
        return self.model_path(pointer["tag"]) if pointer else None

    def _append_history(self, entry: dict) -> None:
        path = self.root / "production" / HISTORY_FILE
        with open(path, "a") as history:
            history.write(json.dumps(entry, default=str) + "\n")
            history.flush()
            os.fsync(history.fileno())

    def _recover(self, track: str) -> None:
        """Finish or abandon a pointer move a dead process left half done (caller holds the lock)."""
        intent_path = self._intent_path(track)
        if not intent_path.is_file():
            return
        try:
            intent = json.loads(intent_path.read_text())
        except json.JSONDecodeError:  # torn intent: the move never started
            intent_path.unlink()
            return
        pointer = self._read_pointer(track)
        if pointer is not None and pointer.get("move_id") == intent["move_id"]:
            # The pointer moved; only the history line was lost with the process.
            self._append_history({**pointer, "event": intent["event"], "note": "recorded after a crash"})
            logger.warning("registry: completed the history of %s's move to %s", track, intent["tag"])
        else:
            self._append_history(
                {
                    "event": "abandoned",
                    "dataset": track,
                    "tag": intent["tag"],
                    "at": _now(),
                    "actor": "registry-recovery",
                    "reason": f"the process moving production to {intent['tag']} died before the pointer "
                    f"moved; production stays {pointer['tag'] if pointer else None}",
                }
            )
            logger.warning("registry: abandoned an unfinished move of %s to %s", track, intent["tag"])
        intent_path.unlink()
        _fsync_dir(intent_path.parent)

    def _move_pointer(
        self, tag: str, track: str, expected_current, event: str, reason: str, actor: str | None
    ) -> dict:
        stored = self.stored(tag)
        with self._locked():
            self._recover(track)
            current = self._read_pointer(track)
            current_tag = current["tag"] if current else None
            if expected_current is not ANY and current_tag != expected_current:
                raise PointerMoved(
                    f"production for {track} points at {current_tag}, not {expected_current} as this run saw "
                    f"it: another run or operator moved it meanwhile; {tag} was not promoted (rerun the "
                    "evaluation against the new production model)"
                )
            pointer = {
                "tag": tag,
                "dataset": track,
                "model_name": stored.metadata.get("model_name"),
                "test_metrics": stored.metadata.get("test_metrics", {}),
                "sample_identity": stored.metadata.get("sample_identity", {}),
                "test_set_fingerprint": stored.metadata.get("test_set_fingerprint"),
                "promoted_at": _now(),
                "previous": current_tag,
                "event": event,
                "reason": reason,
                "actor": actor or default_actor(),
                "move_id": f"{os.getpid()}-{time.time_ns()}",
            }
            _write_json_atomically(self._intent_path(track), {**pointer})
            _crash_point("after_intent")
            _write_json_atomically(self.pointer_path(track), pointer)
            _crash_point("after_pointer")
            self._append_history(pointer)
            self._intent_path(track).unlink()
            _fsync_dir(self.root / "production")
        logger.info("production for %s -> %s (was %s): %s", track, tag, current_tag, reason)
        return pointer

    def promote(
        self,
        tag: str,
        track: str,
        *,
        expected_current=ANY,
        reason: str = "",
        actor: str | None = None,
    ) -> dict:
        """Point `track`'s production at `tag`. With `expected_current` (a tag, or None for "no production
        yet") the move is a compare-and-swap: it raises PointerMoved if production is elsewhere."""
        return self._move_pointer(tag, track, expected_current, "promote", reason, actor)

    def rollback(self, track: str, to: str | None = None, reason: str = "", actor: str | None = None) -> dict:
        """Move production back to `to`, or to the model it replaced; recorded in the history."""
        current = self.production(track)
        if current is None:
            raise RegistryError(f"no production model for {track}: nothing to roll back")
        if to is None:
            to = current.get("previous")
            if not to:
                raise RegistryError(
                    f"production for {track} ({current['tag']}) replaced no earlier model; name one with --to"
                )
        if to == current["tag"]:
            raise RegistryError(f"production for {track} is already {to}")
        stored = self.stored(to)
        if stored.metadata.get("track", track) != track:
            raise RegistryError(f"{to} was trained on {stored.metadata.get('track')}, not {track}")
        return self._move_pointer(
            to, track, current["tag"], "rollback", reason or "rolled back by an operator", actor
        )

    def history(self, track: str | None = None) -> list[dict]:
        """Every pointer move (oldest first), of one track or all."""
        path = self.root / "production" / HISTORY_FILE
        if not path.is_file():
            return []
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write: skip it, keep the rest
                logger.warning("registry history line %d is unreadable; skipped", number)
                continue
            if track is None or entry.get("dataset") == track:
                entries.append(entry)
        return entries

    def tracks(self) -> list[str]:
        """Tracks that have a production pointer."""
        tracks = []
        for path in sorted((self.root / "production").glob("*.json")):
            if path.name.endswith((".intent.json", ".bento.json")):  # journals and serving's Bento sidecars
                continue
            with contextlib.suppress(json.JSONDecodeError, OSError):
                tracks.append(json.loads(path.read_text()).get("dataset", path.stem))
        return tracks

    # ----------------------------------------------------------------------------------- versions
    def stored(self, tag: str):
        """The stored version `tag` (labels, metadata, path); RegistryError if there is none."""
        try:
            model = find_model(self.root, tag)
        except StoreError as error:
            raise RegistryError(str(error)) from error
        if model is None:
            raise RegistryError(f"model {tag} is not in the registry at {self.root}")
        return model

    def model_path(self, tag: str) -> Path:
        """Folder of a stored model version."""
        return self.stored(tag).path

    def _stages(self) -> tuple[set[str], set[str]]:
        """(tags a pointer names now, tags a pointer ever named): read once for any number of stages."""
        current = set()
        for track in self.tracks():
            pointer = self._read_pointer(track)
            if pointer:
                current.add(pointer["tag"])
        ever = {entry.get("tag") for entry in self.history() if entry.get("event") != "abandoned"}
        return current, ever

    @staticmethod
    def _stage_of(tag: str, current: set[str], ever: set[str]) -> str:
        return "production" if tag in current else "retired" if tag in ever else "candidate"

    def stage(self, tag: str) -> str:
        """The live stage: "production" while a pointer names it, "retired" once one did, else "candidate"."""
        return self._stage_of(tag, *self._stages())

    def register(self, model_dir: str | Path, dataset_dir: str | Path) -> str:
        """Copy a trained (and evaluated) model folder into the store; returns its tag. Nothing is stored if
        any file is missing or unreadable (BentoML saves only when the block completes)."""
        model_dir, dataset_dir = Path(model_dir), Path(dataset_dir)
        meta = self._read_json(model_dir / MODEL_META_FILE)
        evaluation = self._read_json(model_dir / EVALUATION_FILE)
        dataset = self._read_json(dataset_dir / "dataset.json")
        if not (model_dir / CHECKPOINT_FILE).is_file():
            raise RegistryError(f"{model_dir} has no {CHECKPOINT_FILE}")
        track = dataset.get("track", dataset["name"])
        name = f"longrec-{dataset_slug(track)}-{meta['model_name']}"
        training_set = meta.get("training_set", {})
        metadata = {
            "model_name": meta["model_name"],
            "model_config": meta.get("model_config", {}),
            "feature_spec": meta.get("feature_spec", {}),
            "train_config": meta.get("train_config", {}),
            "training_set": training_set,
            "runtime": meta.get("runtime", {}),
            "test_metrics": evaluation.get("test_metrics", {}),
            "valid_metrics": meta.get("valid_metrics", {}),
            "dataset": dataset["name"],
            "track": track,
            "dataset_fingerprint": dataset["fingerprint"],
            "sample_identity": evaluation.get("sample_identity", {}),
            "test_set_fingerprint": evaluation.get("test_set_fingerprint"),
        }
        # Registration labels; the live stage comes from the pointers (`stage()`, `longrec registry list`).
        labels = {"dataset": dataset_slug(track), "model": meta["model_name"], "stage": "candidate"}
        try:
            tag = create_model(self.root, name, model_dir, labels, _metadata_safe(metadata))
        except StoreError as error:
            raise RegistryError(str(error)) from error
        logger.info("registered %s", tag)
        return tag

    def register_and_promote(
        self,
        model_dir: str | Path,
        dataset_dir: str | Path,
        *,
        expected_current=ANY,
        reason: str = "passed the promotion gate",
        actor: str | None = None,
    ) -> str:
        """register() then promote(): the pipeline's last step after the gate said promote."""
        tag = self.register(model_dir, dataset_dir)
        dataset = self._read_json(Path(dataset_dir) / "dataset.json")
        track = dataset.get("track", dataset["name"])
        self.promote(tag, track, expected_current=expected_current, reason=reason, actor=actor)
        return tag

    def list_models(self, track: str | None = None) -> list[dict]:
        """Every stored version with its tag, labels, live stage and test AUC (oldest first)."""
        rows = []
        current, ever = self._stages()
        for model in list_stored_models(self.root):
            if model.labels.get("role") == "memory-shard":  # serving's per-shard copies of an LMN memory
                continue
            model_track = model.metadata.get("track", model.metadata.get("dataset"))
            if track is not None and model_track != track:
                continue
            rows.append(
                {
                    "tag": model.tag,
                    "track": model_track,
                    "model_name": model.metadata.get("model_name"),
                    "labels": model.labels,
                    "stage": self._stage_of(model.tag, current, ever),
                    "test_auc": model.metadata.get("test_metrics", {}).get("auc"),
                    "created": model.creation_time,
                }
            )
        return rows

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            return read_json_file(path)
        except ModelFolderError as error:
            raise RegistryError(str(error)) from error
