"""Feature views: the user's behaviour-event log (training), the latest sequence snapshot (serving) and
the static item / user side features.

Built from the objects in entities.py and data_sources.py (imported, not rebuilt: Feast collects
objects by identity, so a second copy of an entity or source would be applied twice).
"""

from data_sources import (
    item_side_features_source,
    user_behavior_events_source,
    user_behavior_sequence_source,
    user_side_features_source,
)
from entities import item, user

from longrec.features.definitions import build_feature_views

user_behavior_events, user_behavior_sequence, item_side_features, user_side_features = build_feature_views(
    user,
    item,
    user_behavior_events_source,
    user_behavior_sequence_source,
    item_side_features_source,
    user_side_features_source,
)
