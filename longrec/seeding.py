"""Seeds derived from a run's one `seed`, one per use, so the uses are independent of each other."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, stream: str) -> int:
    """An independent 32-bit seed for one use of the run's seed ("negative-sampling", "model-init", ...):
    the negatives a run samples and the weights it starts from do not move together when one changes."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
