"""Request and response bodies of `POST /rank`, with the limits the service enforces at the edge.

Vocabulary checks (an item id the model has never seen) need the loaded model and happen in the ranker;
everything that can be said without it is said here, so a bad body is a 4xx naming its field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_CANDIDATES",
    "MAX_HISTORY_OVERRIDE",
    "History",
    "RankRequest",
    "RankResponse",
    "ScoredItem",
]

MAX_CANDIDATES = 1_000
MAX_HISTORY_OVERRIDE = 10_000  # events accepted in a history override; the model reads its last L
MAX_ID = 2**62  # ids are int64 in every store; this keeps arithmetic on them far from overflow

ItemId = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]


class History(BaseModel):
    """A user history given in the request instead of the online store's: oldest first."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemId] = Field(max_length=MAX_HISTORY_OVERRIDE, description="Item ids, oldest first.")
    timestamps: list[Annotated[int, Field(ge=0, le=MAX_ID, strict=True)]] = Field(
        max_length=MAX_HISTORY_OVERRIDE, description="Unix seconds of those events, aligned with items."
    )

    @model_validator(mode="after")
    def _aligned(self) -> History:
        if len(self.items) != len(self.timestamps):
            raise ValueError(
                f"history.items has {len(self.items)} entries but history.timestamps {len(self.timestamps)}"
            )
        if any(b < a for a, b in zip(self.timestamps, self.timestamps[1:], strict=False)):
            raise ValueError("history.timestamps must be non-decreasing (oldest first)")
        return self


class RankRequest(BaseModel):
    """Score ``candidate_items`` for ``user_id`` and return them best first."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID, strict=True, description="User id (as in the training data).")
    candidate_items: list[ItemId] = Field(
        min_length=1, max_length=MAX_CANDIDATES, description="Item ids to score, 1 to 1,000."
    )
    history: History | None = Field(
        default=None, description="Use this history instead of the online store's (items + timestamps)."
    )
    top_k: int | None = Field(
        default=None, ge=1, le=MAX_CANDIDATES, strict=True, description="Return only the best k items."
    )
    timestamp: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        strict=True,
        description="Unix seconds of the request (time-gap features); default: the server's clock.",
    )


class ScoredItem(BaseModel):
    """One candidate with its click probability and logit."""

    item_id: int
    score: float = Field(description="Predicted click probability, sigmoid(logit).")
    logit: float


class RankResponse(BaseModel):
    """Candidates best first, the model that scored them, and what went wrong on the way."""

    items: list[ScoredItem]
    model_tag: str
    model_name: str
    history_length: int = Field(description="Valid history events the model read.")
    unknown_user: bool = Field(description="The user has no history in the store: scored with none.")
    feature_fallback: bool = Field(
        description="The online store could not be read: scored with an empty history."
    )
    degraded_memory: bool = Field(
        description="A memory shard did not answer in time: its slots were read as zero."
    )
    arm: str = Field("main", description="A/B arm that served the request: control, candidate, or main.")
    experiment_id: int | None = Field(None, description="The running A/B experiment, if any.")
    request_id: str | None = Field(None, description="Id of this request in the rollout's request log.")
