"""Entities of the longrec feature repo: `user` (user_id) and `item` (item_id), both Int64."""

from longrec.features.definitions import build_entities

user, item = build_entities()
