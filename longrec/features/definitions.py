"""Feast objects of longrec: entities, batch sources, feature views and feature services.

A user's behaviour is held twice, once per access pattern:

- `user_behavior_events` (training, offline only): the event log, one row per event
  (`behavior_item_id`, and `behavior_position`, the event's 0-based rank in the user's log, which orders
  events sharing a second). Storage is O(events) whatever L is. A history for a target at `t` is the
  user's last L rows with `event_timestamp < t` (ties with the target's second excluded); any L can be
  read back, and the view's `ttl` (if positive) drops events older than `t - ttl`.
- `user_behavior_sequence` (serving): one row per user holding the last L events as of the export
  (`sequence_items`, `sequence_timestamps`, both Array(Int64), oldest first), which materialization puts
  in the online store, so an online read is one keyed lookup with no sequence assembly at request time.
  Its offline rows are serving snapshots, not a history of every second: training never reads them.

The views name their batch sources only through the `source` arguments of `build_feature_views`, so the
same views run over Spark, BigQuery or any other offline store's sources on a cluster.

Side features are static: one row per user / item with an event timestamp before the first event.

TTL: in Feast 0.67 a ttl of `timedelta(0)` means "never expires" (the offline stores then only require
feature timestamp <= entity timestamp; `ttl=None` is stored as 0 in the registry and reads back as 0).
A user's history stays valid however long ago it happened, so the default is 0; a positive `ttl` drops
history events older than `t - ttl` (and older snapshots online). Static side features never expire.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.data_source import DataSource
from feast.types import Array, Int64
from feast.value_type import ValueType

OWNER = "recsys-platform@longrec.dev"
TEAM_TAGS = {"team": "longrec", "domain": "recommendation"}

SEQUENCE_VIEW = "user_behavior_sequence"
EVENTS_VIEW = "user_behavior_events"
ITEM_VIEW = "item_side_features"
USER_VIEW = "user_side_features"
TRAINING_SERVICE = "longrec_training"
SERVING_SERVICE = "longrec_serving"

# Parquet files inside the data directory, one per feature view.
SEQUENCE_FILE = "user_behavior_sequence.parquet"
EVENTS_FILE = "user_behavior_events.parquet"
ITEM_FILE = "item_side_features.parquet"
USER_FILE = "user_side_features.parquet"

TIMESTAMP_FIELD = "event_timestamp"
SEQUENCE_FEATURES = ("sequence_items", "sequence_timestamps")
EVENT_FEATURES = ("behavior_item_id", "behavior_position")
ITEM_FEATURES = ("genre_id",)
USER_FEATURES = ("age_id", "gender_id", "occupation_id")

NEVER_EXPIRES = timedelta(0)


@dataclass(frozen=True)
class FeatureDefinitions:
    """Every Feast object of the project, built once so each has a single identity."""

    user: Entity
    item: Entity
    events_source: DataSource
    sequence_source: DataSource
    item_source: DataSource
    user_source: DataSource
    user_behavior_events: FeatureView
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


def build_sources(data_dir: Path | str) -> tuple[FileSource, FileSource, FileSource, FileSource]:
    """Local parquet sources of the events, sequence, item and user views (a cluster passes its own)."""
    # Absolute: the DuckDB offline store reads a FileSource path as given (relative to the working
    # directory, not the repo), unlike the file store.
    data_dir = Path(data_dir).resolve()

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
        source(
            f"{EVENTS_VIEW}_source", EVENTS_FILE, "Every event: user, item, time and rank in the user's log."
        ),
        source(f"{SEQUENCE_VIEW}_source", SEQUENCE_FILE, "Per-user snapshots of the last L events."),
        source(f"{ITEM_VIEW}_source", ITEM_FILE, "Static item attributes."),
        source(f"{USER_VIEW}_source", USER_FILE, "Static user attributes."),
    )


def build_feature_views(
    user: Entity,
    item: Entity,
    events_source: DataSource,
    sequence_source: DataSource,
    item_source: DataSource,
    user_source: DataSource,
    ttl: timedelta | None = None,
) -> tuple[FeatureView, FeatureView, FeatureView, FeatureView]:
    """The behaviour-event log, the serving sequence snapshot and the two static side-feature views."""
    sequence_ttl = NEVER_EXPIRES if ttl is None else ttl
    user_behavior_events = FeatureView(
        name=EVENTS_VIEW,
        entities=[user],
        ttl=sequence_ttl,
        schema=[
            Field(name="user_id", dtype=Int64),
            Field(name="behavior_item_id", dtype=Int64, description="Item of the event."),
            Field(
                name="behavior_position",
                dtype=Int64,
                description="0-based rank of the event in the user's log (orders events of one second).",
            ),
        ],
        source=events_source,
        # Online, a view keyed by user would hold only the last event: serving reads the snapshot view.
        online=False,
        description="The behaviour log, one row per event; histories are read from it point-in-time.",
        owner=OWNER,
        tags={**TEAM_TAGS, "representation": "event-log"},
    )
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
        description="Snapshot of a user's last L events as of the export, for the online store.",
        owner=OWNER,
        tags={**TEAM_TAGS, "representation": "latest-snapshot-per-user"},
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
    return user_behavior_events, user_behavior_sequence, item_side_features, user_side_features


def build_feature_services(
    user_behavior_events: FeatureView,
    user_behavior_sequence: FeatureView,
    item_side_features: FeatureView,
    user_side_features: FeatureView,
) -> tuple[FeatureService, FeatureService]:
    """Training reads the event log point-in-time; serving reads the latest snapshot online."""
    views = [user_behavior_sequence, item_side_features, user_side_features]
    training = FeatureService(
        name=TRAINING_SERVICE,
        features=[user_behavior_events, item_side_features, user_side_features],
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
    sources = build_sources(data_dir)
    views = build_feature_views(user, item, *sources, ttl=ttl)
    training, serving = build_feature_services(*views)
    return FeatureDefinitions(user, item, *sources, *views, training, serving)


def feature_definitions(data_dir: Path | str, ttl: timedelta | None = None) -> list:
    """The Feast objects to apply: entities, sources, feature views and feature services."""
    return build_definitions(data_dir, ttl=ttl).objects()
