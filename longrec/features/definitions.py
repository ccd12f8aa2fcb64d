"""Feast objects of longrec: entities, parquet sources, feature views and feature services.

Representation of a user's behaviour sequence (feature view `user_behavior_sequence`):
one row per (user, distinct event timestamp) holding a *snapshot* of that user's last
`max_history_length` events whose timestamp is <= the row's `event_timestamp`, oldest first
(`sequence_items`, `sequence_timestamps`, both Array(Int64)). Events sharing a second are all in
the same snapshot, so a point-in-time lookup at `t - 1s` returns exactly the events strictly
before `t` (timestamps are whole seconds): ties with the target event never leak into its
history. The newest snapshot of each user is what materialization puts in the online store.

The cost is storage: each event is repeated in up to L snapshots (see
`longrec.features.store.measure_offline_storage`). In exchange, both historical retrieval and online
serving are a single keyed lookup, with no sequence assembly at request time.

Side features are static: one row per user / item with an event timestamp before the first event.

TTL: in Feast 0.67 a ttl of `timedelta(0)` means "never expires" (the file offline store then only
requires feature timestamp <= entity timestamp; `ttl=None` is stored as 0 in the registry and reads
back as 0). A user's last known history stays valid however long ago it was written, so the default
is 0; pass a positive `ttl` to treat older snapshots as missing. Static side features never expire.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Int64
from feast.value_type import ValueType

OWNER = "recsys-platform@longrec.dev"
TEAM_TAGS = {"team": "longrec", "domain": "recommendation"}

SEQUENCE_VIEW = "user_behavior_sequence"
ITEM_VIEW = "item_side_features"
USER_VIEW = "user_side_features"
TRAINING_SERVICE = "longrec_training"
SERVING_SERVICE = "longrec_serving"

# Parquet files inside the data directory, one per feature view.
SEQUENCE_FILE = "user_behavior_sequence.parquet"
ITEM_FILE = "item_side_features.parquet"
USER_FILE = "user_side_features.parquet"

TIMESTAMP_FIELD = "event_timestamp"
SEQUENCE_FEATURES = ("sequence_items", "sequence_timestamps")
ITEM_FEATURES = ("genre_id",)
USER_FEATURES = ("age_id", "gender_id", "occupation_id")

NEVER_EXPIRES = timedelta(0)


@dataclass(frozen=True)
class FeatureDefinitions:
    """Every Feast object of the project, built once so each has a single identity."""

    user: Entity
    item: Entity
    sequence_source: FileSource
    item_source: FileSource
    user_source: FileSource
    user_behavior_sequence: FeatureView
    item_side_features: FeatureView
    user_side_features: FeatureView
    longrec_training: FeatureService
    longrec_serving: FeatureService

    def objects(self) -> list:
        """All objects in the order `FeatureStore.apply` accepts them."""
        return [getattr(self, f.name) for f in fields(self)]


def build_entities() -> tuple[Entity, Entity]:
    """The `user` and `item` entities (int64 join keys)."""
    user = Entity(
        name="user",
        join_keys=["user_id"],
        value_type=ValueType.INT64,
        description="A user; ids are contiguous from 1.",
        owner=OWNER,
        tags=TEAM_TAGS,
    )
    item = Entity(
        name="item",
        join_keys=["item_id"],
        value_type=ValueType.INT64,
        description="An item; ids are contiguous from 1.",
        owner=OWNER,
        tags=TEAM_TAGS,
    )
    return user, item


def build_sources(data_dir: Path | str) -> tuple[FileSource, FileSource, FileSource]:
    """Parquet sources of the sequence, item and user views; relative dirs resolve against the repo root."""
    # Feast resolves a relative FileSource path against the repo path, which keeps a repo relocatable.
    data_dir = Path(data_dir)

    def source(name: str, file_name: str, description: str) -> FileSource:
        return FileSource(
            name=name,
            path=(data_dir / file_name).as_posix(),
            timestamp_field=TIMESTAMP_FIELD,
            description=description,
            owner=OWNER,
            tags=TEAM_TAGS,
        )

    return (
        source(f"{SEQUENCE_VIEW}_source", SEQUENCE_FILE, "Per-user snapshots of the last L events."),
        source(f"{ITEM_VIEW}_source", ITEM_FILE, "Static item attributes."),
        source(f"{USER_VIEW}_source", USER_FILE, "Static user attributes."),
    )


def build_feature_views(
    user: Entity,
    item: Entity,
    sequence_source: FileSource,
    item_source: FileSource,
    user_source: FileSource,
    ttl: timedelta | None = None,
) -> tuple[FeatureView, FeatureView, FeatureView]:
    """The behaviour-sequence view and the two static side-feature views."""
    sequence_ttl = NEVER_EXPIRES if ttl is None else ttl
    user_behavior_sequence = FeatureView(
        name=SEQUENCE_VIEW,
        entities=[user],
        ttl=sequence_ttl,
        schema=[
            Field(name="user_id", dtype=Int64),
            Field(
                name="sequence_items",
                dtype=Array(Int64),
                description="Item ids of the user's last L events up to the row timestamp, oldest first.",
            ),
            Field(
                name="sequence_timestamps",
                dtype=Array(Int64),
                description="Unix seconds of those events, aligned with sequence_items.",
            ),
        ],
        source=sequence_source,
        online=True,
        description="Snapshot of a user's last L events as of each distinct event timestamp.",
        owner=OWNER,
        tags={**TEAM_TAGS, "representation": "snapshot-per-distinct-timestamp"},
    )
    item_side_features = FeatureView(
        name=ITEM_VIEW,
        entities=[item],
        ttl=NEVER_EXPIRES,
        schema=[
            Field(name="item_id", dtype=Int64),
            Field(name="genre_id", dtype=Int64, description="Primary genre, 0 = unknown."),
        ],
        source=item_source,
        online=True,
        description="Static item attributes.",
        owner=OWNER,
        tags={**TEAM_TAGS, "static": "true"},
    )
    user_side_features = FeatureView(
        name=USER_VIEW,
        entities=[user],
        ttl=NEVER_EXPIRES,
        schema=[
            Field(name="user_id", dtype=Int64),
            Field(name="age_id", dtype=Int64, description="Age bucket, 0 = unknown."),
            Field(name="gender_id", dtype=Int64, description="Gender, 0 = unknown."),
            Field(name="occupation_id", dtype=Int64, description="Occupation, 0 = unknown."),
        ],
        source=user_source,
        online=True,
        description="Static user attributes.",
        owner=OWNER,
        tags={**TEAM_TAGS, "static": "true"},
    )
    return user_behavior_sequence, item_side_features, user_side_features


def build_feature_services(
    user_behavior_sequence: FeatureView,
    item_side_features: FeatureView,
    user_side_features: FeatureView,
) -> tuple[FeatureService, FeatureService]:
    """Training and serving services; same features today, separate so each can evolve and log alone."""
    views = [user_behavior_sequence, item_side_features, user_side_features]
    training = FeatureService(
        name=TRAINING_SERVICE,
        features=views,
        description="Features joined point-in-time into training samples.",
        owner=OWNER,
        tags=TEAM_TAGS,
    )
    serving = FeatureService(
        name=SERVING_SERVICE,
        features=views,
        description="Features read from the online store when scoring candidates.",
        owner=OWNER,
        tags=TEAM_TAGS,
    )
    return training, serving


def build_definitions(data_dir: Path | str, ttl: timedelta | None = None) -> FeatureDefinitions:
    """Build every Feast object once, reading parquet files from `data_dir`."""
    user, item = build_entities()
    sequence_source, item_source, user_source = build_sources(data_dir)
    views = build_feature_views(user, item, sequence_source, item_source, user_source, ttl=ttl)
    training, serving = build_feature_services(*views)
    return FeatureDefinitions(
        user, item, sequence_source, item_source, user_source, *views, training, serving
    )


def feature_definitions(data_dir: Path | str, ttl: timedelta | None = None) -> list:
    """The Feast objects to apply: entities, sources, feature views and feature services."""
    return build_definitions(data_dir, ttl=ttl).objects()
