"""Feature services: `longrec_training` (point-in-time history reads) and `longrec_serving` (online)."""

from features import item_side_features, user_behavior_events, user_behavior_sequence, user_side_features

from longrec.features.definitions import build_feature_services

longrec_training, longrec_serving = build_feature_services(
    user_behavior_events, user_behavior_sequence, item_side_features, user_side_features
)
