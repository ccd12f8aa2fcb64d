"""Great Expectations checks a training-set frame must pass before any model trains on it.

The frame follows `longrec.data.schema`: scalar columns of SCALAR_SAMPLE_COLUMNS plus fixed-length,
right-padded list columns (SEQUENCE_SAMPLE_COLUMNS). GE's built-in expectations work on scalar columns,
so each list-column rule is first reduced, vectorised with numpy, to a per-row derived column
(`mask_matches_padding`, `history_before_target`, ...) and GE then checks that column: the report names
one expectation per rule. Rows whose lists do not have length L get null derived values, so they are
reported once, by the length rule, rather than by every history rule.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longrec.data.schema import (
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
            return f"{self.name}: {NOT_EVALUATED} ({self.error})"
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
        return f"{self.name}: {'; '.join(parts)}" if parts else self.name

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
    unavailable: dict[str, str] = field(default_factory=dict)  # derived column -> reason
    well_formed_rows: int = 0


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
    """Reduce the list columns to per-row scalars with numpy (no per-row Python beyond taking lengths)."""
    derived = _Derived()
    n_rows = len(frame)
    present = [c for c in SEQUENCE_SAMPLE_COLUMNS if c in frame.columns]
    lengths = {c: _row_lengths(frame[c]) for c in present}
    for column in present:
        derived.columns[f"{column}_length"] = lengths[column]
    if len(present) < len(SEQUENCE_SAMPLE_COLUMNS):
        return derived  # the history rules are skipped: a missing list column fails its own check

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
        if values.dtype == bool:
            derived.columns[name] = pd.arrays.BooleanArray(full, mask=~well_formed)
        elif np.issubdtype(values.dtype, np.integer):
            derived.columns[name] = pd.arrays.IntegerArray(full.astype(np.int64), mask=~well_formed)
        else:
            derived.columns[name] = pd.arrays.FloatingArray(full.astype(np.float64), mask=~well_formed)

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

    def mask() -> np.ndarray:
        need("history_mask")
        return arrays["history_mask"]

    def items() -> np.ndarray:
        need("history_items")
        return arrays["history_items"]

    def timestamps() -> np.ndarray:
        need("history_timestamps")
        return arrays["history_timestamps"]

    def mask_matches_padding() -> np.ndarray:
        need("history_length")
        history_length = _numeric(frame, "history_length")[well_formed]
        expected = np.arange(max_len)[None, :] < history_length[:, None]
        return (mask() == expected).all(axis=1)

    def items_match_mask() -> np.ndarray:
        return ((items() != 0) == mask()).all(axis=1)

    @functools.cache
    def valid() -> np.ndarray:
        return mask().astype(bool)

    @functools.cache
    def max_history_timestamp() -> np.ndarray:
        return np.where(valid(), timestamps(), 0).max(axis=1, initial=0)

    def history_before_target() -> np.ndarray:
        need("target_timestamp")
        target = _numeric(frame, "target_timestamp")[well_formed]
        # Rows without valid events pass here: an empty history is the history_length rule's business.
        return ~valid().any(axis=1) | (max_history_timestamp() < target)

    def history_oldest_first() -> np.ndarray:
        both_valid = valid()[:, 1:] & valid()[:, :-1]
        return (~both_valid | (np.diff(timestamps(), axis=1) >= 0)).all(axis=1)

    put("history_item_min", lambda: items().min(axis=1))  # L >= 1, so every row has a minimum
    put("history_item_max", lambda: items().max(axis=1))
    put("mask_matches_padding", mask_matches_padding)
    put("items_match_mask", items_match_mask)
    put("max_history_timestamp", max_history_timestamp)
    put("history_before_target", history_before_target)
    put("history_oldest_first", history_oldest_first)
    return derived


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
        return "table"


def _build_rules(frame: pd.DataFrame, config: ValidationConfig) -> list[_Rule]:
    """The suite for this frame, in report order: table and schema, scalar values, history, global rates."""
    max_len = int(config.max_history_length or 0)
    n_users, n_items = int(config.n_users or 0), int(config.n_items or 0)
    rules: list[_Rule] = []

    def add(
        rule_id: str, title: str, why: str, expectation: str, requires: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        # Schema columns a rule reads must be present; derived columns are checked once computed.
        column = kwargs.get("column")
        source = [column] if column in SCALAR_SAMPLE_COLUMNS or column in SEQUENCE_SAMPLE_COLUMNS else []
        requires = (*requires, *source, *kwargs.get("column_list", ()))
        rules.append(_Rule(rule_id, title, why, expectation, kwargs, tuple(dict.fromkeys(requires))))

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
        "history_item_min",
        "history item ids >= 0",
        "item 0 is padding; negative ids are corrupt",
        "ExpectColumnValuesToBeBetween",
        requires=history,
        column="history_item_min",
        min_value=0,
    )
    add(
        "history_item_max",
        f"history item ids <= {n_items - 1}",
        "history ids index the item embedding table",
        "ExpectColumnValuesToBeBetween",
        requires=history,
        column="history_item_max",
        max_value=n_items - 1,
    )
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
        "history_before_target",
        "history timestamps strictly before target",
        "an event at or after the target leaks the label",
        "ExpectColumnValuesToBeInSet",
        requires=(*history, "target_timestamp"),
        column="history_before_target",
        value_set=[True],
    )
    add(
        "history_oldest_first",
        "valid history timestamps oldest first (non-decreasing)",
        "sequence models and time buckets assume chronological order",
        "ExpectColumnValuesToBeInSet",
        requires=history,
        column="history_oldest_first",
        value_set=[True],
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


def _run_suite(batch: pd.DataFrame, rules: list[_Rule], config: ValidationConfig) -> dict:
    """Run `rules` as one GE suite over `batch` in an ephemeral context; the GE result as JSON."""
    # Imported here: great_expectations takes ~9 s to import and most users of longrec.validation
    # (components, pipeline compilation) only need the types.
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.row_conditions import Column

    # In memory, no Data Docs site (the report is rendered by _render_html), and no tqdm bars in logs.
    project_config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=project_config)
    batch_definition = (
        context.data_sources.add_pandas(name="training_set")
        .add_dataframe_asset(name="samples")
        .add_batch_definition_whole_dataframe(name="whole_frame")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for rule in rules:
        kwargs = dict(rule.kwargs)
        if "row_condition" in kwargs:
            column, value = kwargs.pop("row_condition")
            kwargs["row_condition"] = Column(column) == value
        expectation_cls = getattr(gx.expectations, rule.expectation)
        suite.add_expectation(
            expectation_cls(**kwargs, description=rule.title, notes=rule.why, meta={"rule_id": rule.rule_id})
        )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{SUITE_NAME}_validation", data=batch_definition, suite=suite)
    )
    key_columns = [c for c in SAMPLE_KEY if c in batch.columns]
    result_format: dict[str, Any] = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": config.max_examples,
    }
    if key_columns:  # failing rows are identified by their sample key in the examples
        result_format["unexpected_index_column_names"] = key_columns
    result = definition.run(batch_parameters={"dataframe": batch}, result_format=result_format)
    return result.to_json_dict()


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
    frame: pd.DataFrame, spec: FeatureSpec, config: ValidationConfig | None = None
) -> ValidationResult:
    """Validate a training-set frame against the GE suite built from `spec` and `config`."""
    started = time.perf_counter()
    config = (config or ValidationConfig()).resolved(spec)
    max_len = int(config.max_history_length or 0)

    derived = _derive_sequence_columns(frame, max_len)
    derive_seconds = time.perf_counter() - started
    # GE fingerprints every batch by hashing it, and pickles the frame when cells are unhashable (~5 s for
    # 250k x 3 arrays). The list contents are already reduced to derived columns, so the batch carries each
    # list column's row lengths in its place (GE still checks the column is present). Built as a new frame
    # in one go: the caller's frame is untouched and pandas consolidates blocks once, not on every GE filter.
    columns = {c: frame[c].array for c in frame.columns}
    for column in SEQUENCE_SAMPLE_COLUMNS:
        if column in columns:
            columns[column] = derived.columns[f"{column}_length"]
    columns.update(derived.columns)
    batch = pd.DataFrame(columns, index=frame.index)

    rules = _build_rules(frame, config)
    skipped = {r.rule_id: reason for r in rules if (reason := _skip_reason(r, frame, batch, derived))}
    runnable = [r for r in rules if r.rule_id not in skipped]

    import_started = time.perf_counter()
    import great_expectations  # noqa: F401  # the first call pays the ~9 s import; timed on its own

    import_seconds = time.perf_counter() - import_started
    ge_started = time.perf_counter()
    ge_result = _run_suite(batch, runnable, config)
    ge_seconds = time.perf_counter() - ge_started

    by_rule = {
        (item.get("expectation_config") or {}).get("meta", {}).get("rule_id"): item
        for item in ge_result.get("results", [])
    }
    outcomes = [
        _outcome(r, by_rule.get(r.rule_id), skipped.get(r.rule_id), config.max_examples) for r in rules
    ]
    failed = [o for o in outcomes if o.success is False]
    not_evaluated = [o for o in outcomes if o.success is None]
    success = not failed and not not_evaluated and bool(ge_result.get("success"))

    statistics = {
        "n_rows": len(frame),
        "max_history_length": max_len,
        "n_expectations": len(outcomes),
        "n_passed": sum(o.success is True for o in outcomes),
        "n_failed": len(failed),
        "n_not_evaluated": len(not_evaluated),
        "well_formed_history_rows": derived.well_formed_rows,
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


def _skip_reason(rule: _Rule, frame: pd.DataFrame, batch: pd.DataFrame, derived: _Derived) -> str | None:
    """Why `rule` cannot run on this frame (an input column missing or unreadable), else None."""
    if rule.expectation == "ExpectColumnToExist":
        return None  # always run: its failure is the readable report of a missing column
    missing = [c for c in rule.requires if c not in frame.columns]
    if missing:
        return f"column {', '.join(missing)} missing"
    column = rule.kwargs.get("column")
    if column in derived.unavailable:
        return derived.unavailable[column]
    if column is not None and column not in batch.columns:
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
