"""Great Expectations checks a training-set frame must pass before any model trains on it.

The frame follows `longrec.data.schema`: scalar columns of SCALAR_SAMPLE_COLUMNS plus fixed-length,
right-padded list columns (SEQUENCE_SAMPLE_COLUMNS). Rules run as GE's own expectations on three batches:

- `samples`: the frame itself (schema, ids, labels, splits, positive rates, split order, coverage), plus
  three per-row structure columns GE cannot express over fixed-length lists (list lengths, mask ==
  padding, items nonzero exactly where the mask is set);
- `history_events`: the histories exploded to one row per valid event, so "every history event is
  earlier than its target" is a column-pair expectation (target_timestamp > history_timestamp), and
  chronological order is one too (history_timestamp >= the previous event's);
- `negative_windows`: each negative sample's distinct history items plus its target, so "a negative is
  never an item of its own history" is a compound-uniqueness expectation.

Rows whose lists do not have length L are left out of the exploded batches and reported once, by the
length rule. With `docs_dir`, the validation also builds GE's Data Docs site there.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longrec.data.schema import (
    LONG_HISTORY_COLUMNS,
    SAMPLE_KEY,
    SCALAR_SAMPLE_COLUMNS,
    SEQUENCE_SAMPLE_COLUMNS,
    SPLITS,
    FeatureSpec,
)

logger = logging.getLogger(__name__)

SUITE_NAME = "longrec_training_set"
NOT_EVALUATED = "not evaluated"


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the training-set suite; vocabulary sizes and L left as None come from the FeatureSpec."""

    # With 1 sampled negative per positive the train rate is 0.5; with 4 (eval splits) it is 0.2.
    min_positive_rate: float = 0.05
    max_positive_rate: float = 0.6
    # Per-split (min, max) overrides of the bounds above, e.g. {"train": (0.45, 0.55)}.
    positive_rate_by_split: dict[str, tuple[float, float]] = field(default_factory=dict)
    allowed_splits: tuple[str, ...] = SPLITS
    max_history_length: int | None = None  # None: spec.max_history_length
    n_users: int | None = None  # vocabulary size including the 0 slot; None: spec.n_users
    n_items: int | None = None  # None: spec.n_items
    side_vocab: dict[str, int] | None = None  # side column -> vocabulary size; None: spec.side_vocab()
    check_side_features: bool = True  # side ids must index the model's embedding tables
    max_examples: int = 5  # unexpected values / rows kept per failed expectation
    # The time split cuts the time range: every train target precedes every valid one, and valid test.
    time_ordered_splits: bool = False
    min_users_per_split: int = 1  # coverage: distinct users each split present must have
    min_items_per_split: int = 1  # coverage: distinct target items each split present must have
    # L_long of a training set built with a long view (SampleConfig.memory_history_length); None or 0: the
    # samples must not claim one. The long-view rules read the windows from the log, not the frame.
    memory_history_length: int | None = None

    def __post_init__(self) -> None:
        bounds = {"*": (self.min_positive_rate, self.max_positive_rate), **self.positive_rate_by_split}
        for split, (low, high) in bounds.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"positive-rate bounds for {split!r} must satisfy 0 <= min <= max <= 1")
        for name in ("max_history_length", "n_users", "n_items"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.allowed_splits:
            raise ValueError("allowed_splits must not be empty")
        if self.max_examples < 0:
            raise ValueError("max_examples must be >= 0")

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **overrides: Any) -> ValidationConfig:
        """Default thresholds with the vocabulary sizes and history length taken from `spec`."""
        return cls(**overrides).resolved(spec)

    def resolved(self, spec: FeatureSpec) -> ValidationConfig:
        """A copy whose unset sizes (None) are filled from `spec`."""
        return replace(
            self,
            max_history_length=self.max_history_length or spec.max_history_length,
            n_users=self.n_users or spec.n_users,
            n_items=self.n_items or spec.n_items,
            side_vocab=self.side_vocab if self.side_vocab is not None else spec.side_vocab(),
        )

    def positive_rate_bounds(self, split: str | None) -> tuple[float, float]:
        """(min, max) positive rate allowed for `split` (None: the whole frame)."""
        if split is not None and split in self.positive_rate_by_split:
            return self.positive_rate_by_split[split]
        return self.min_positive_rate, self.max_positive_rate


@dataclass
class ExpectationOutcome:
    """One expectation of the suite and how the frame fared against it."""

    rule_id: str
    title: str  # what the rule means, in words
    expectation_type: str  # GE snake-case name, e.g. expect_column_values_to_be_in_set
    target: str  # the column (or columns) it checks
    why: str
    success: bool | None  # None: not evaluated (an input column was missing or unreadable)
    kwargs: dict = field(default_factory=dict)
    observed_value: Any = None
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list = field(default_factory=list)
    error: str | None = None

    @property
    def name(self) -> str:
        """Readable name: the rule in words, then the GE expectation and column it ran as."""
        return f"{self.title} ({self.expectation_type} on {self.target})"

    @property
    def status(self) -> str:
        """PASS, FAIL or SKIPPED."""
        return {True: "PASS", False: "FAIL", None: "SKIPPED"}[self.success]

    def summary(self) -> str:
        """The name plus what was seen: counts, observed value, a few examples or the error."""
        if self.success is None:
            return f"{self.name}: {NOT_EVALUATED} ({self.error}) [rule {self.rule_id}]"
        parts: list[str] = []
        if self.unexpected_count is not None and self.element_count is not None:
            pct = f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            parts.append(f"{self.unexpected_count} of {self.element_count} rows unexpected{pct}")
        elif self.observed_value is not None:
            parts.append(f"observed {_short(self.observed_value)}")
        if self.examples:
            parts.append(f"e.g. {_short(self.examples[:3])}")
        if self.error:
            parts.append(f"error: {self.error}")
        text = f"{self.name}: {'; '.join(parts)}" if parts else self.name
        return f"{text} [rule {self.rule_id}]"  # the id names it in the suite and the JSON results

    def to_dict(self) -> dict:
        """JSON-ready dict of the outcome."""
        return _jsonable(
            {
                "rule_id": self.rule_id,
                "name": self.name,
                "title": self.title,
                "expectation_type": self.expectation_type,
                "target": self.target,
                "why": self.why,
                "status": self.status,
                "success": self.success,
                "kwargs": self.kwargs,
                "observed_value": self.observed_value,
                "element_count": self.element_count,
                "unexpected_count": self.unexpected_count,
                "unexpected_percent": self.unexpected_percent,
                "examples": self.examples,
                "error": self.error,
            }
        )


@dataclass
class ValidationResult:
    """Outcome of `validate_training_set`: overall success, readable failures, stats and the raw GE JSON."""

    success: bool
    failed_expectations: list[str]  # summary lines of failed expectations
    skipped_expectations: list[str]  # expectations that could not run (they also make success False)
    outcomes: list[ExpectationOutcome]
    statistics: dict
    ge_result: dict = field(default_factory=dict, repr=False)  # ExpectationSuiteValidationResult JSON

    def failed(self) -> list[ExpectationOutcome]:
        """The outcomes that failed."""
        return [o for o in self.outcomes if o.success is False]

    def to_dict(self) -> dict:
        """JSON-serialisable dict: summary, every expectation outcome, statistics and the raw GE result."""
        return _jsonable(
            {
                "suite": SUITE_NAME,
                "success": self.success,
                "failed_expectations": self.failed_expectations,
                "skipped_expectations": self.skipped_expectations,
                "statistics": self.statistics,
                "expectations": [o.to_dict() for o in self.outcomes],
                "great_expectations": self.ge_result,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def render_html(self) -> str:
        """A standalone HTML page: PASS/FAIL header, statistics and a table of every expectation."""
        return _render_html(self)


class TrainingSetValidationError(Exception):
    """Raised by `assert_valid` when a training set fails its suite; the message names each failure."""

    def __init__(self, result: ValidationResult):
        self.result = result
        stats = result.statistics
        lines = [
            f"training set failed validation: {stats.get('n_failed', 0)} of "
            f"{stats.get('n_expectations', 0)} expectations failed"
            + (f", {len(result.skipped_expectations)} not evaluated" if result.skipped_expectations else "")
        ]
        lines += [f"  - {line}" for line in result.failed_expectations]
        lines += [f"  - {line}" for line in result.skipped_expectations]
        super().__init__("\n".join(lines))


def assert_valid(result: ValidationResult) -> None:
    """Raise TrainingSetValidationError naming the failed expectations unless `result` succeeded."""
    if not result.success:
        raise TrainingSetValidationError(result)


def write_report(
    result: ValidationResult, html_path: str | Path, json_path: str | Path | None = None
) -> None:
    """Write the HTML report (and, if `json_path` is given, the JSON result), creating parent folders."""
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(result.render_html(), encoding="utf-8")
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(result.to_json(), encoding="utf-8")
    logger.info("validation report written to %s%s", html_path, f" and {json_path}" if json_path else "")


# ----------------------------------------------------------------------------------------------------
# Derived per-row columns for the list-column rules
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Derived:
    """Per-row columns computed from the list columns, and why any could not be computed."""

    columns: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # derived column or batch -> reason
    well_formed_rows: int = 0
    batches: dict[str, pd.DataFrame] = field(default_factory=dict)  # exploded batches by name


def _row_lengths(values: pd.Series) -> np.ndarray:
    """Length of each row's list; -1 where the value is not a sequence (None, a scalar)."""
    try:  # the fast common case; strings of length L are caught later, when stacking finds no numbers
        return np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    except TypeError:
        pass
    return np.fromiter(
        (len(v) if hasattr(v, "__len__") and not isinstance(v, str) else -1 for v in values),
        dtype=np.int64,
        count=len(values),
    )


def _stack(values: np.ndarray, length: int, column: str) -> np.ndarray:
    """Rows (all of `length`) as one [n, length] numeric array; ValueError if they are not numeric."""
    if len(values) == 0:
        return np.zeros((0, length), dtype=np.int64)
    array = np.stack(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{column} holds non-numeric values (dtype {array.dtype})")
    return array


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A scalar column as a numeric numpy array; ValueError if it is not numeric."""
    if not pd.api.types.is_numeric_dtype(frame[column]):
        raise ValueError(f"{column} is not numeric (dtype {frame[column].dtype})")
    return frame[column].to_numpy()


def _derive_sequence_columns(frame: pd.DataFrame, max_len: int) -> _Derived:
    """Per-row list structure columns, and the exploded batches, with numpy (no per-row Python)."""
    derived = _Derived()
    n_rows = len(frame)
    present = [c for c in SEQUENCE_SAMPLE_COLUMNS if c in frame.columns]
    lengths = {c: _row_lengths(frame[c]) for c in present}
    for column in present:
        derived.columns[f"{column}_length"] = lengths[column]
    if len(present) < len(SEQUENCE_SAMPLE_COLUMNS):
        missing = sorted(set(SEQUENCE_SAMPLE_COLUMNS) - set(present))
        for name in (*EXPLODED_BATCHES, "mask_matches_padding", "items_match_mask"):
            derived.unavailable[name] = f"column {', '.join(missing)} missing"
        return derived  # a missing list column fails its own check

    # Only rows whose three lists all have length L can be stacked; the others get null values below.
    well_formed = np.logical_and.reduce([lengths[c] == max_len for c in present])
    derived.well_formed_rows = int(well_formed.sum())
    all_rows = bool(well_formed.all())

    def put(name: str, compute: Callable[[], np.ndarray]) -> None:
        try:
            values = compute()
        except (TypeError, ValueError) as exc:  # unreadable input: the rule is reported as not evaluated
            derived.unavailable[name] = str(exc)
            return
        if all_rows:
            derived.columns[name] = values
            return
        full = np.zeros(n_rows, dtype=values.dtype)
        full[well_formed] = values
        derived.columns[name] = pd.arrays.BooleanArray(full, mask=~well_formed)

    arrays: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for column in present:
        try:
            arrays[column] = _stack(frame[column].to_numpy()[well_formed], max_len, column)
        except (TypeError, ValueError) as exc:
            errors[column] = str(exc)

    def need(*columns: str) -> None:
        for column in columns:
            if column in errors:
                raise ValueError(errors[column])
            if column not in arrays and column not in frame.columns:
                raise ValueError(f"column {column} is missing")

    def mask_matches_padding() -> np.ndarray:
        need("history_mask", "history_length")
        history_length = _numeric(frame, "history_length")[well_formed]
        expected = np.arange(max_len)[None, :] < history_length[:, None]
        return (arrays["history_mask"] == expected).all(axis=1)

    def items_match_mask() -> np.ndarray:
        need("history_items", "history_mask")
        return ((arrays["history_items"] != 0) == arrays["history_mask"]).all(axis=1)

    put("mask_matches_padding", mask_matches_padding)
    put("items_match_mask", items_match_mask)
    try:
        need(*SEQUENCE_SAMPLE_COLUMNS)
        derived.batches = _exploded_batches(frame, well_formed, arrays)
    except (TypeError, ValueError, KeyError) as exc:
        for name in EXPLODED_BATCHES:
            derived.unavailable[name] = str(exc)
    return derived


EXPLODED_BATCHES = ("history_events", "negative_windows")


def _exploded_batches(frame: pd.DataFrame, well_formed: np.ndarray, arrays: dict) -> dict[str, pd.DataFrame]:
    """history_events (one row per valid event) and negative_windows (a negative's items and target)."""
    # Lean on purpose (millions of rows): examples name `sample_row`, mapped back to sample keys later.
    rows = np.flatnonzero(well_formed)
    valid = arrays["history_mask"].astype(bool)
    sample, position = np.nonzero(valid)  # row-major: each sample's events in position order
    stamps = arrays["history_timestamps"][sample, position].astype(np.int64)
    previous = np.empty_like(stamps)
    if len(stamps):
        previous[0] = stamps[0]
        same_sample = sample[1:] == sample[:-1]
        previous[1:] = np.where(same_sample, stamps[:-1], stamps[1:])  # the first event has no previous
    events = pd.DataFrame(
        {
            "sample_row": rows[sample],
            "history_item": arrays["history_items"][sample, position].astype(np.int64),
            "history_timestamp": stamps,
            "previous_history_timestamp": previous,
        }
    )
    if "target_timestamp" in frame.columns:
        events["target_timestamp"] = _numeric(frame, "target_timestamp")[rows][sample]
    windows = pd.DataFrame(columns=["sample_row", "window_item"])
    if {"label", "target_item"} <= set(frame.columns):
        negative = _numeric(frame, "label")[rows] == 0
        history = events[negative[sample]][["sample_row", "history_item"]]
        history = history.drop_duplicates(["sample_row", "history_item"]).rename(
            columns={"history_item": "window_item"}
        )
        targets = pd.DataFrame(
            {
                "sample_row": rows[negative],
                "window_item": _numeric(frame, "target_item")[rows][negative].astype(np.int64),
            }
        )
        windows = pd.concat([history, targets], ignore_index=True)
    return {"history_events": events, "negative_windows": windows}


# ----------------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One expectation plus the columns it needs; built as (GE class name, kwargs) so GE imports lazily."""

    rule_id: str
    title: str
    why: str
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict
    requires: tuple[str, ...]
    batch: str = "samples"  # "samples" or one of EXPLODED_BATCHES

    def display_kwargs(self) -> dict:
        """The expectation's parameters, with the row condition as text."""
        kwargs = dict(self.kwargs)
        if "row_condition" in kwargs:
            column, value = kwargs["row_condition"]
            kwargs["row_condition"] = f"{column} == {value!r}"
        return kwargs

    @property
    def target(self) -> str:
        if "column" in self.kwargs:
            return str(self.kwargs["column"])
        if "column_list" in self.kwargs:
            return ", ".join(self.kwargs["column_list"])
        if "column_A" in self.kwargs:
            return f"{self.kwargs['column_A']}, {self.kwargs['column_B']} of {self.batch}"
        return "table"


def _build_rules(frame: pd.DataFrame, config: ValidationConfig) -> list[_Rule]:
    """The suite for this frame, in report order: table and schema, scalar values, history, global rates."""
    max_len = int(config.max_history_length or 0)
    n_users, n_items = int(config.n_users or 0), int(config.n_items or 0)
    rules: list[_Rule] = []

    def add(
        rule_id: str,
        title: str,
        why: str,
        expectation: str,
        requires: tuple[str, ...] = (),
        batch: str = "samples",
        **kwargs: Any,
    ) -> None:
        # Schema columns a rule reads must be present; derived columns are checked once computed.
        column = kwargs.get("column")
        source = [column] if column in SCALAR_SAMPLE_COLUMNS or column in SEQUENCE_SAMPLE_COLUMNS else []
        if batch == "samples":
            source += list(kwargs.get("column_list", ()))
        requires = (*requires, *source)
        rules.append(_Rule(rule_id, title, why, expectation, kwargs, tuple(dict.fromkeys(requires)), batch))

    add(
        "non_empty",
        "training set has rows",
        "an empty split trains nothing",
        "ExpectTableRowCountToBeBetween",
        min_value=1,
    )
    for column in (*SCALAR_SAMPLE_COLUMNS, *SEQUENCE_SAMPLE_COLUMNS):
        add(
            f"exists_{column}",
            f"column {column} present",
            "the sample schema (longrec.data.schema)",
            "ExpectColumnToExist",
            column=column,
        )
    for column, dtype in SCALAR_SAMPLE_COLUMNS.items():
        add(
            f"dtype_{column}",
            f"{column} has dtype {dtype}",
            "batching casts by the schema dtypes",
            "ExpectColumnValuesToBeOfType",
            column=column,
            type_=dtype,
        )
    for column in SCALAR_SAMPLE_COLUMNS:
        add(
            f"not_null_{column}",
            f"{column} not null",
            "every sample needs every scalar field",
            "ExpectColumnValuesToNotBeNull",
            column=column,
        )

    add(
        "user_id_range",
        f"user_id in [1, {n_users - 1}]",
        "0 is padding; ids index the user vocabulary",
        "ExpectColumnValuesToBeBetween",
        column="user_id",
        min_value=1,
        max_value=n_users - 1,
    )
    add(
        "target_item_range",
        f"target_item in [1, {n_items - 1}]",
        "0 is padding; ids index the item embedding table",
        "ExpectColumnValuesToBeBetween",
        column="target_item",
        min_value=1,
        max_value=n_items - 1,
    )
    add(
        "label_binary",
        "labels in {0, 1}",
        "1 = real next event, 0 = sampled negative",
        "ExpectColumnValuesToBeInSet",
        column="label",
        value_set=[0, 1],
    )
    add(
        "split_allowed",
        f"split in {{{', '.join(config.allowed_splits)}}}",
        "unknown splits leak or vanish",
        "ExpectColumnValuesToBeInSet",
        column="split",
        value_set=list(config.allowed_splits),
    )
    add(
        "history_length_range",
        f"history_length between 1 and {max_len}",
        "a sample needs at least one event and at most L (max_history_length)",
        "ExpectColumnValuesToBeBetween",
        column="history_length",
        min_value=1,
        max_value=max_len,
    )
    if config.check_side_features:
        for column, vocab in (config.side_vocab or {}).items():
            add(
                f"{column}_range",
                f"{column} in [0, {vocab - 1}]",
                "side ids index embedding tables (0 = unknown)",
                "ExpectColumnValuesToBeBetween",
                column=column,
                min_value=0,
                max_value=vocab - 1,
            )
    add(
        "no_duplicate_keys",
        f"no duplicate sample keys {SAMPLE_KEY}",
        "a duplicated sample double-counts in training and metrics",
        "ExpectCompoundColumnsToBeUnique",
        column_list=list(SAMPLE_KEY),
    )

    for column in SEQUENCE_SAMPLE_COLUMNS:
        add(
            f"{column}_length",
            f"{column} lists have length L={max_len}",
            "list columns are fixed-length and right-padded",
            "ExpectColumnValuesToBeBetween",
            requires=(column,),
            column=f"{column}_length",
            min_value=max_len,
            max_value=max_len,
        )
    history = tuple(SEQUENCE_SAMPLE_COLUMNS)
    add(
        "mask_matches_padding",
        "history mask True exactly on the first history_length positions",
        "right padding: valid events first, then mask False",
        "ExpectColumnValuesToBeInSet",
        requires=(*history, "history_length"),
        column="mask_matches_padding",
        value_set=[True],
    )
    add(
        "items_match_mask",
        "history items nonzero exactly where the mask is True",
        "item 0 is padding and only padding",
        "ExpectColumnValuesToBeInSet",
        requires=history,
        column="items_match_mask",
        value_set=[True],
    )
    add(
        "history_item_range",
        f"history item ids in [1, {n_items - 1}]",
        "valid history ids index the item embedding table (0 is padding only)",
        "ExpectColumnValuesToBeBetween",
        requires=history,
        batch="history_events",
        column="history_item",
        min_value=1,
        max_value=n_items - 1,
    )
    add(
        "history_before_target",
        "every history event strictly before its target",
        "an event at or after the target leaks the label",
        "ExpectColumnPairValuesAToBeGreaterThanB",
        requires=(*history, "target_timestamp"),
        batch="history_events",
        column_A="target_timestamp",
        column_B="history_timestamp",
        or_equal=False,
    )
    add(
        "history_oldest_first",
        "history events oldest first (each at or after the previous one)",
        "sequence models and time buckets assume chronological order",
        "ExpectColumnPairValuesAToBeGreaterThanB",
        requires=history,
        batch="history_events",
        column_A="history_timestamp",
        column_B="previous_history_timestamp",
        or_equal=True,
    )
    add(
        "negative_not_in_history",
        "a negative target is never an item of its own history",
        "negatives are items the user never interacted with (MODELS.md section 0)",
        "ExpectCompoundColumnsToBeUnique",
        requires=(*history, "label", "target_item"),
        batch="negative_windows",
        column_list=["sample_row", "window_item"],
    )

    if config.memory_history_length:
        _add_long_view_rules(add, int(config.memory_history_length))

    splits_present = (
        [s for s in config.allowed_splits if (frame["split"] == s).any()] if "split" in frame.columns else []
    )
    if config.time_ordered_splits and "target_timestamp" in frame.columns and "split" in frame.columns:
        times = pd.to_numeric(frame["target_timestamp"], errors="coerce")
        for earlier, later in itertools.pairwise(splits_present):
            bound = times[frame["split"] == later].min()
            add(
                f"split_order_{earlier}_{later}",
                f"every {earlier} target at or before the first {later} target",
                "the time split cuts the time range: a later split must not train the earlier one",
                "ExpectColumnMaxToBeBetween",
                requires=("split",),
                column="target_timestamp",
                max_value=int(bound),
                row_condition=("split", earlier),
            )
    for split in splits_present:
        for column, minimum, what in (
            ("user_id", config.min_users_per_split, "users"),
            ("target_item", config.min_items_per_split, "target items"),
        ):
            add(
                f"coverage_{what.replace(' ', '_')}_{split}",
                f"split {split} has at least {minimum} distinct {what}",
                "a split without users or items evaluates nothing",
                "ExpectColumnUniqueValueCountToBeBetween",
                requires=("split",),
                column=column,
                min_value=minimum,
                row_condition=("split", split),
            )

    # One positive-rate rule per split present (bounds differ by negatives per positive), else one overall.
    if "split" in frame.columns:
        splits = [s for s in config.allowed_splits if (frame["split"] == s).any()]
    else:
        splits = []
    for split in splits or [None]:
        low, high = config.positive_rate_bounds(split)
        where = f" in split {split}" if split else ""
        kwargs: dict[str, Any] = {"column": "label", "min_value": low, "max_value": high}
        if split:
            kwargs["row_condition"] = ("split", split)  # made a GE Condition when the suite is built
        add(
            f"positive_rate_{split or 'all'}",
            f"positive rate{where} in [{low}, {high}]",
            "too few positives or too few negatives means a broken sampler",
            "ExpectColumnMeanToBeBetween",
            requires=("split",) if split else (),
            **kwargs,
        )
    return rules


def _add_long_view_rules(add: Callable[..., None], long_length: int) -> None:
    """The long view's rules: its columns, window sizes, and windows (read from the log) that hold only
    the sample's own user's events, all strictly before the target."""
    for column in LONG_HISTORY_COLUMNS:
        add(
            f"exists_{column}",
            f"column {column} present",
            f"the training set was built with a long view (memory_history_length={long_length})",
            "ExpectColumnToExist",
            column=column,
        )
    add(
        "long_history_length_range",
        f"long_history_length between 0 and {long_length}",
        "the long view holds at most L_long (memory_history_length) events",
        "ExpectColumnValuesToBeBetween",
        requires=("long_history_length",),
        column="long_history_length",
        min_value=0,
        max_value=long_length,
    )
    add(
        "long_history_covers_history",
        "long_history_length >= history_length",
        "the long window extends the short history back in time",
        "ExpectColumnPairValuesAToBeGreaterThanB",
        requires=("long_history_length", "history_length"),
        column_A="long_history_length",
        column_B="history_length",
        or_equal=True,
    )
    add(
        "long_window_in_log_of_user",
        "every long window lies in the event log and holds only the sample's user's events",
        "a window across users or past the log's end writes someone else's history into the memory",
        "ExpectColumnValuesToBeInSet",
        requires=("long_history_start", "long_history_length", "user_id"),
        column="long_window_of_user",
        value_set=[True],
    )
    add(
        "long_history_before_target",
        "every long-window event strictly before its target (newest event, read from the log)",
        "an event at or after the target written into the memory leaks the label",
        "ExpectColumnPairValuesAToBeGreaterThanB",
        requires=("long_history_start", "long_history_length", "target_timestamp"),
        column_A="target_timestamp",
        column_B="long_window_newest_timestamp",
        or_equal=False,
    )


def _long_window_columns(frame: pd.DataFrame, long_log) -> dict[str, Any]:
    """Derived columns of the long-view rules, from the log itself: whether each window lies in the log
    and in its user's events, and the time of its newest event (the log is time-sorted within a user)."""
    start = pd.to_numeric(frame["long_history_start"], errors="coerce").to_numpy()
    length = pd.to_numeric(frame["long_history_length"], errors="coerce").to_numpy()
    users = pd.to_numeric(frame["user_id"], errors="coerce").to_numpy()
    n = len(long_log)
    readable = ~(np.isnan(start.astype(float)) | np.isnan(length.astype(float)))
    start = np.where(readable, start, 0).astype(np.int64)
    length = np.where(readable, length, 0).astype(np.int64)
    inside = readable & (start >= 0) & (length >= 0) & (start + length <= n)
    empty = inside & (length == 0)
    first = np.clip(start, 0, max(n - 1, 0))
    last = np.clip(start + length - 1, 0, max(n - 1, 0))
    if n:
        same_user = (long_log.user_ids[first] == users) & (long_log.user_ids[last] == users)
        newest = np.where(inside & ~empty, long_log.timestamps[last], 0)
    else:
        same_user = np.zeros(len(frame), bool)
        newest = np.zeros(len(frame), np.int64)
    return {
        "long_window_of_user": inside & (empty | same_user),
        "long_window_newest_timestamp": newest.astype(np.int64),
    }


def _run_suite(
    batches: dict[str, pd.DataFrame],
    rules: list[_Rule],
    config: ValidationConfig,
    docs_dir: str | Path | None = None,
) -> dict:
    """Run `rules` as one GE suite per batch; the merged GE results as JSON. With `docs_dir`, the run goes
    through a Checkpoint in a file-backed context whose Data Docs site is then copied to `docs_dir`."""
    # Imported here: great_expectations takes ~9 s to import and most users of longrec.validation
    # (components, pipeline compilation) only need the types.
    import tempfile

    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.row_conditions import Column

    workdir = tempfile.TemporaryDirectory() if docs_dir else None
    if workdir is not None:
        context = gx.get_context(mode="file", project_root_dir=workdir.name)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    else:  # in memory, no Data Docs site, no tqdm bars in logs
        project_config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=project_config)
    source = context.data_sources.add_pandas(name="training_set")
    definitions, parameters = [], {}
    for batch_name, frame in batches.items():
        batch_rules = [rule for rule in rules if rule.batch == batch_name]
        if not batch_rules:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=f"{SUITE_NAME}.{batch_name}"))
        for rule in batch_rules:
            kwargs = dict(rule.kwargs)
            if "row_condition" in kwargs:
                column, value = kwargs.pop("row_condition")
                kwargs["row_condition"] = Column(column) == value
            expectation_cls = getattr(gx.expectations, rule.expectation)
            suite.add_expectation(
                expectation_cls(
                    **kwargs, description=rule.title, notes=rule.why, meta={"rule_id": rule.rule_id}
                )
            )
        batch_definition = source.add_dataframe_asset(name=batch_name).add_batch_definition_whole_dataframe(
            name="whole_frame"
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{SUITE_NAME}.{batch_name}", data=batch_definition, suite=suite)
        )
        definitions.append(definition)
        parameters[definition.name] = frame

    def result_format(frame: pd.DataFrame) -> dict[str, Any]:
        # Failing rows are identified by their sample key (exploded batches: their sample's row).
        keys = [c for c in SAMPLE_KEY if c in frame.columns] or ["sample_row"]
        return {
            "result_format": "SUMMARY",
            "partial_unexpected_count": config.max_examples,
            "unexpected_index_column_names": keys,
        }

    results = []
    try:
        if workdir is None:
            for definition in definitions:
                frame = parameters[definition.name]
                run = definition.run(
                    batch_parameters={"dataframe": frame}, result_format=result_format(frame)
                )
                results.append(run.to_json_dict())
        else:
            # One checkpoint per batch (each takes its own dataframe), each updating the Data Docs site.
            for definition in definitions:
                checkpoint = context.checkpoints.add(
                    gx.Checkpoint(
                        name=f"checkpoint.{definition.name}",
                        validation_definitions=[definition],
                        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                        result_format=result_format(parameters[definition.name]),
                    )
                )
                run = checkpoint.run(batch_parameters={"dataframe": parameters[definition.name]})
                results += [r.to_json_dict() for r in run.run_results.values()]
            site = Path(workdir.name) / "gx" / "uncommitted" / "data_docs" / "local_site"
            target = Path(docs_dir)
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(site, target)
    finally:
        if workdir is not None:
            workdir.cleanup()
    return {
        "success": all(r.get("success") for r in results),
        "results": [item for r in results for item in r.get("results", [])],
        "statistics": {
            r.get("meta", {}).get("validation_id", str(i)): r.get("statistics", {})
            for i, r in enumerate(results)
        },
        "runs": [{k: v for k, v in r.items() if k != "results"} for r in results],
    }


def _outcome(
    rule: _Rule, ge_item: dict | None, skipped_reason: str | None, max_examples: int
) -> ExpectationOutcome:
    """Turn one GE expectation result (or a skip) into an ExpectationOutcome."""
    outcome = ExpectationOutcome(
        rule_id=rule.rule_id,
        title=rule.title,
        expectation_type=_snake(rule.expectation),
        target=rule.target,
        why=rule.why,
        success=None,
        kwargs=rule.display_kwargs(),
    )
    if ge_item is None:
        outcome.error = skipped_reason or "no result from Great Expectations"
        return outcome
    res = ge_item.get("result") or {}
    exception = ge_item.get("exception_info") or {}
    messages = _exception_messages(exception)
    outcome.success = bool(ge_item.get("success")) and not messages
    outcome.error = "; ".join(messages) or None
    outcome.observed_value = res.get("observed_value")
    outcome.element_count = res.get("element_count")
    outcome.unexpected_count = res.get("unexpected_count")
    outcome.unexpected_percent = res.get("unexpected_percent")
    if rule.expectation == "ExpectColumnToExist" and not outcome.success:
        outcome.observed_value = "missing"
    if not outcome.success:
        rows = res.get("partial_unexpected_index_list") or []
        outcome.examples = (rows or res.get("partial_unexpected_list") or [])[:max_examples]
    return outcome


def _exception_messages(exception_info: dict) -> list[str]:
    """Exception messages of a GE result (its exception_info is flat or keyed by metric)."""
    if "raised_exception" in exception_info:
        infos = [exception_info]
    else:
        infos = [v for v in exception_info.values() if isinstance(v, dict)]
    return sorted({str(i.get("exception_message")) for i in infos if i.get("raised_exception")})


def validate_training_set(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    config: ValidationConfig | None = None,
    docs_dir: str | Path | None = None,
    long_log=None,
) -> ValidationResult:
    """Validate a training-set frame against the GE suites built from `spec` and `config`; with
    `docs_dir`, also build Great Expectations' Data Docs site there (index.html). A long view
    (``config.memory_history_length``) is checked against ``long_log``, the event log its windows index."""
    started = time.perf_counter()
    config = (config or ValidationConfig()).resolved(spec)
    max_len = int(config.max_history_length or 0)

    derived = _derive_sequence_columns(frame, max_len)
    derive_seconds = time.perf_counter() - started
    # GE fingerprints every batch by hashing it, and pickles the frame when cells are unhashable (slow for
    # list cells). The list contents are already reduced to derived columns, so the batch carries each
    # list column's row lengths in its place (GE still checks the column is present). Built as a new frame
    # in one go: the caller's frame is untouched and pandas consolidates blocks once, not on every GE filter.
    columns = {c: frame[c].array for c in frame.columns}
    for column in SEQUENCE_SAMPLE_COLUMNS:
        if column in columns:
            columns[column] = derived.columns[f"{column}_length"]
    columns.update(derived.columns)
    if config.memory_history_length:
        if long_log is None:
            derived.unavailable["long_window_of_user"] = "the long view's event log is missing"
            derived.unavailable["long_window_newest_timestamp"] = "the long view's event log is missing"
        elif all(c in frame.columns for c in ("long_history_start", "long_history_length", "user_id")):
            columns.update(_long_window_columns(frame, long_log))
    batch = pd.DataFrame(columns, index=frame.index)

    rules = _build_rules(frame, config)
    batches = {"samples": batch, **derived.batches}
    skipped = {r.rule_id: reason for r in rules if (reason := _skip_reason(r, frame, batches, derived))}
    runnable = [r for r in rules if r.rule_id not in skipped]

    import_started = time.perf_counter()
    import great_expectations  # noqa: F401  # the first call pays the ~9 s import; timed on its own

    import_seconds = time.perf_counter() - import_started
    ge_started = time.perf_counter()
    ge_result = _run_suite(batches, runnable, config, docs_dir)
    ge_seconds = time.perf_counter() - ge_started

    by_rule = {
        (item.get("expectation_config") or {}).get("meta", {}).get("rule_id"): item
        for item in ge_result.get("results", [])
    }
    outcomes = [
        _outcome(r, by_rule.get(r.rule_id), skipped.get(r.rule_id), config.max_examples) for r in rules
    ]
    key_columns = [c for c in SAMPLE_KEY if c in frame.columns]
    for outcome in outcomes:  # examples of exploded batches name a sample row: show its key as well
        outcome.examples = [
            {**example, **{c: frame[c].iloc[int(example["sample_row"])] for c in key_columns}}
            if isinstance(example, dict) and "sample_row" in example
            else example
            for example in outcome.examples
        ]
    failed = [o for o in outcomes if o.success is False]
    not_evaluated = [o for o in outcomes if o.success is None]
    success = not failed and not not_evaluated and bool(ge_result.get("success"))

    statistics = {
        "n_rows": len(frame),
        "max_history_length": max_len,
        "memory_history_length": int(config.memory_history_length) if config.memory_history_length else None,
        "n_expectations": len(outcomes),
        "n_passed": sum(o.success is True for o in outcomes),
        "n_failed": len(failed),
        "n_not_evaluated": len(not_evaluated),
        "well_formed_history_rows": derived.well_formed_rows,
        "rows_by_batch": {name: len(b) for name, b in batches.items()},
        **_frame_statistics(frame),
        "derive_seconds": round(derive_seconds, 3),
        "great_expectations_import_seconds": round(import_seconds, 3),
        "great_expectations_seconds": round(ge_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "great_expectations_statistics": ge_result.get("statistics", {}),
    }
    result = ValidationResult(
        success=success,
        failed_expectations=[o.summary() for o in failed],
        skipped_expectations=[o.summary() for o in not_evaluated],
        outcomes=outcomes,
        statistics=_jsonable(statistics),
        ge_result=_jsonable(ge_result),
    )
    log = logger.info if success else logger.warning
    log(
        "training-set validation %s: %d rows, %d/%d expectations passed, %d failed, %d not evaluated (%.2fs)",
        "PASSED" if success else "FAILED",
        len(frame),
        statistics["n_passed"],
        len(outcomes),
        len(failed),
        len(not_evaluated),
        statistics["total_seconds"],
    )
    for line in result.failed_expectations + result.skipped_expectations:
        logger.warning("  %s", line)
    return result


def _skip_reason(
    rule: _Rule, frame: pd.DataFrame, batches: dict[str, pd.DataFrame], derived: _Derived
) -> str | None:
    """Why `rule` cannot run on this frame (an input column missing or unreadable), else None."""
    if rule.expectation == "ExpectColumnToExist":
        return None  # always run: its failure is the readable report of a missing column
    missing = [c for c in rule.requires if c not in frame.columns]
    if missing:
        return f"column {', '.join(missing)} missing"
    if rule.batch not in batches:
        return derived.unavailable.get(rule.batch, f"batch {rule.batch} unavailable")
    for key in ("column", "column_A", "column_B"):
        column = rule.kwargs.get(key)
        if column in derived.unavailable:
            return derived.unavailable[column]
        if column is not None and column not in batches[rule.batch].columns:
            return f"derived column {column} unavailable"
    return None


def _frame_statistics(frame: pd.DataFrame) -> dict:
    """Rows and positive rate per split, for the report header."""
    stats: dict[str, Any] = {}
    if "split" in frame.columns:
        stats["rows_by_split"] = {str(k): int(v) for k, v in frame["split"].value_counts().items()}
    if "label" in frame.columns and pd.api.types.is_numeric_dtype(frame["label"]) and len(frame):
        stats["positive_rate"] = float((frame["label"] == 1).mean())
        if "split" in frame.columns:
            rates = (frame["label"] == 1).groupby(frame["split"]).mean()
            stats["positive_rate_by_split"] = {str(k): round(float(v), 4) for k, v in rates.items()}
    return stats


# ----------------------------------------------------------------------------------------------------
# Helpers: JSON and HTML
# ----------------------------------------------------------------------------------------------------


def _snake(class_name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in class_name).lstrip("_")


def _jsonable(value: Any) -> Any:
    """Recursively convert numpy / pandas scalars and containers to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _short(value: Any, limit: int = 240) -> str:
    text = json.dumps(_jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222}
h1{margin:0 0 .3rem}.badge{display:inline-block;padding:.2rem .8rem;border-radius:.3rem;color:#fff;
font-weight:700}.badge.PASS{background:#2e7d32}.badge.FAIL{background:#c62828}.badge.SKIPPED{background:#757575}
table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.PASS td{background:#fff}tr.FAIL td{background:#fff1f1}tr.SKIPPED td{background:#f6f6f6}
code{font-size:.85rem;word-break:break-all}.muted{color:#666;font-size:.85rem}
ul.failures li{margin:.2rem 0}
"""


def _render_html(result: ValidationResult) -> str:
    """Self-contained HTML built from the result (GE Data Docs need a file-backed site; this does not)."""
    esc = html.escape
    status = "PASS" if result.success else "FAIL"
    stats = result.statistics
    summary_rows = [
        ("rows", stats.get("n_rows")),
        ("max history length (L)", stats.get("max_history_length")),
        ("long view (L_long, training only)", stats.get("memory_history_length")),
        ("expectations passed", f"{stats.get('n_passed')} / {stats.get('n_expectations')}"),
        ("failed", stats.get("n_failed")),
        ("not evaluated", stats.get("n_not_evaluated")),
        ("rows by split", stats.get("rows_by_split")),
        ("positive rate by split", stats.get("positive_rate_by_split")),
        ("validation time (s)", stats.get("total_seconds")),
    ]
    summary = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_short(v) if isinstance(v, dict) else str(v))}</td></tr>"
        for k, v in summary_rows
        if v is not None
    )
    failures = "".join(
        f"<li>{esc(line)}</li>" for line in result.failed_expectations + result.skipped_expectations
    )
    body_rows = []
    for o in result.outcomes:
        unexpected = ""
        if o.unexpected_count is not None:
            pct = f" ({o.unexpected_percent:.3g}%)" if o.unexpected_percent is not None else ""
            unexpected = f"{o.unexpected_count} of {o.element_count}{pct}"
        details = _short(o.examples, 600) if o.examples else ""
        if o.error:
            details = f"{details} {o.error}".strip()
        observed = "" if o.observed_value is None else _short(o.observed_value)
        body_rows.append(
            f'<tr class="{o.status}"><td><span class="badge {o.status}">{o.status}</span></td>'
            f"<td><b>{esc(o.title)}</b><br><span class='muted'>{esc(o.why)}</span></td>"
            f"<td><code>{esc(o.expectation_type)}</code><br>on <code>{esc(o.target)}</code></td>"
            f"<td><code>{esc(_short(o.kwargs))}</code></td><td>{esc(observed)}</td>"
            f"<td>{esc(unexpected)}</td><td><code>{esc(details)}</code></td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Training-set validation: {status}</title>
<style>{_CSS}</style></head><body>
<h1>Training-set validation <span class="badge {status}">{status}</span></h1>
<p class="muted">Great Expectations suite <code>{esc(SUITE_NAME)}</code>; example rows are identified by
the sample key ({esc(", ".join(SAMPLE_KEY))}).</p>
<table style="width:auto">{summary}</table>
{f'<h2>Failures</h2><ul class="failures">{failures}</ul>' if failures else ""}
<h2>Expectations</h2>
<table><thead><tr><th>status</th><th>rule</th><th>expectation</th><th>parameters</th><th>observed</th>
<th>unexpected</th><th>examples / error</th></tr></thead><tbody>
{"".join(body_rows)}
</tbody></table></body></html>
"""
