"""The training-set suite passes a consistent frame and names the right expectation for each corruption."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from longrec.data.schema import SAMPLE_KEY, SCALAR_SAMPLE_COLUMNS, SEQUENCE_SAMPLE_COLUMNS, FeatureSpec
from longrec.validation import (
    TrainingSetValidationError,
    ValidationConfig,
    ValidationResult,
    assert_valid,
    validate_training_set,
    write_report,
)

L = 5
SPEC = FeatureSpec(
    n_users=20, n_items=100, n_genres=5, n_ages=3, n_genders=3, n_occupations=4, max_history_length=L
)


def make_frame(
    split_sizes: dict[str, tuple[int, int]] | None = None, seed: int = 0, as_lists: bool = False
) -> pd.DataFrame:
    """A consistent training set: per split, (positives, negatives per positive) samples sharing a history.

    The default is 15 train positives with 1 negative each (rate 0.5) and 4 valid positives with 4
    negatives each (rate 0.2): 50 rows.
    """
    rng = np.random.default_rng(seed)
    split_sizes = split_sizes or {"train": (15, 1), "valid": (4, 4)}
    rows = []
    timestamp = 1_000_000
    for split, (n_positives, negatives_per_positive) in split_sizes.items():
        for _ in range(n_positives):
            timestamp += 1_000  # distinct target timestamps keep sample keys unique
            user = int(rng.integers(1, SPEC.n_users))
            n_events = int(rng.integers(1, L + 1))
            items = np.zeros(L, dtype=np.int64)
            items[:n_events] = rng.integers(1, SPEC.n_items, size=n_events)
            times = np.zeros(L, dtype=np.int64)
            times[:n_events] = timestamp - 10 * np.arange(n_events, 0, -1)  # oldest first, all < target
            mask = np.arange(L) < n_events
            # The positive may repeat a history item; negatives never do (MODELS.md section 0).
            unseen = np.setdiff1d(np.arange(1, SPEC.n_items), items[:n_events])
            positive = int(rng.integers(1, SPEC.n_items))
            negatives = rng.choice(unseen[unseen != positive], size=negatives_per_positive, replace=False)
            targets = [positive, *negatives.tolist()]
            for k, target in enumerate(targets):
                rows.append(
                    {
                        "user_id": user,
                        "target_item": int(target),
                        "target_timestamp": timestamp,
                        "label": int(k == 0),
                        "split": split,
                        "history_length": n_events,
                        "target_genre": int(rng.integers(0, SPEC.n_genres)),
                        "user_age": int(rng.integers(0, SPEC.n_ages)),
                        "user_gender": int(rng.integers(0, SPEC.n_genders)),
                        "user_occupation": int(rng.integers(0, SPEC.n_occupations)),
                        "history_items": items.tolist() if as_lists else items.copy(),
                        "history_timestamps": times.tolist() if as_lists else times.copy(),
                        "history_mask": mask.tolist() if as_lists else mask.copy(),
                    }
                )
    frame = pd.DataFrame(rows)
    return frame.astype({c: t for c, t in SCALAR_SAMPLE_COLUMNS.items()})


def failed_rule_ids(result: ValidationResult) -> set[str]:
    return {o.rule_id for o in result.failed()}


def assert_fails_naming(result: ValidationResult, rule_id: str, name: str) -> None:
    """The rule failed, its readable name is in failed_expectations and in the raised error's message."""
    assert not result.success
    assert rule_id in failed_rule_ids(result), result.failed_expectations
    assert any(line.startswith(name) for line in result.failed_expectations), result.failed_expectations
    with pytest.raises(TrainingSetValidationError) as excinfo:
        assert_valid(result)
    assert name in str(excinfo.value)
    assert excinfo.value.result is result


def row_with_history_length(frame: pd.DataFrame, lo: int, hi: int) -> int:
    return int(np.flatnonzero(frame["history_length"].between(lo, hi).to_numpy())[0])


@pytest.fixture(scope="module")
def valid_result() -> ValidationResult:
    return validate_training_set(make_frame(), SPEC)


def test_consistent_frame_passes(valid_result: ValidationResult) -> None:
    assert valid_result.success, valid_result.failed_expectations
    assert valid_result.failed_expectations == [] and valid_result.skipped_expectations == []
    assert all(o.status == "PASS" for o in valid_result.outcomes)
    stats = valid_result.statistics
    assert stats["n_rows"] == 50 and stats["n_passed"] == stats["n_expectations"]
    assert stats["positive_rate_by_split"] == {"train": 0.5, "valid": 0.2}
    assert {"positive_rate_train", "positive_rate_valid"} <= {o.rule_id for o in valid_result.outcomes}
    assert_valid(valid_result)  # does not raise


def test_python_lists_pass_and_input_is_not_modified() -> None:
    frame = make_frame(as_lists=True)
    columns = list(frame.columns)
    assert validate_training_set(frame, SPEC).success
    assert list(frame.columns) == columns


def test_history_timestamp_at_target_fails() -> None:
    frame = make_frame()
    row = row_with_history_length(frame, 1, L)
    last_event = frame.at[row, "history_length"] - 1
    frame.at[row, "history_timestamps"][last_event] = frame.at[row, "target_timestamp"]
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == {"history_before_target"}
    assert_fails_naming(
        result,
        "history_before_target",
        "every history event strictly before its target (expect_column_pair_values_a_to_be_greater_than_b "
        "on target_timestamp, history_timestamp of history_events)",
    )
    (outcome,) = result.failed()
    assert outcome.unexpected_count == 1  # one event of the exploded history, not one sample row
    assert outcome.examples[0]["target_timestamp"] == frame.at[row, "target_timestamp"]


def test_label_of_two_fails() -> None:
    frame = make_frame()
    frame.loc[1, "label"] = 2
    result = validate_training_set(frame, SPEC)
    name = "labels in {0, 1} (expect_column_values_to_be_in_set on label)"
    assert_fails_naming(result, "label_binary", name)


def test_duplicated_sample_key_fails() -> None:
    frame = make_frame()
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    result = validate_training_set(frame, SPEC)
    assert_fails_naming(result, "no_duplicate_keys", "no duplicate sample keys")
    (outcome,) = [o for o in result.failed() if o.rule_id == "no_duplicate_keys"]
    assert outcome.unexpected_count == 2 and outcome.target == ", ".join(SAMPLE_KEY)


@pytest.mark.parametrize(
    ("column", "rule_id", "name"),
    [
        ("history_items", "history_item_range", "history item ids in [1, 99]"),
        ("target_item", "target_item_range", "target_item in [1, 99]"),
    ],
)
def test_item_out_of_vocabulary_fails(column: str, rule_id: str, name: str) -> None:
    frame = make_frame()
    if column == "history_items":
        frame.at[0, "history_items"][0] = SPEC.n_items
    else:
        frame.loc[0, "target_item"] = SPEC.n_items
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == {rule_id}
    assert_fails_naming(result, rule_id, name)


def test_mask_inconsistent_with_padding_fails() -> None:
    frame = make_frame()
    row = row_with_history_length(frame, 1, L - 1)
    frame.at[row, "history_mask"][L - 1] = True  # a padding slot marked valid
    result = validate_training_set(frame, SPEC)
    assert {"mask_matches_padding", "items_match_mask"} <= failed_rule_ids(result)
    assert_fails_naming(
        result,
        "mask_matches_padding",
        "history mask True exactly on the first history_length positions "
        "(expect_column_values_to_be_in_set on mask_matches_padding)",
    )


@pytest.mark.parametrize("case", ["history_length_over_L", "lists_longer_than_L", "empty_history"])
def test_history_length_out_of_range_fails(case: str) -> None:
    frame = make_frame()
    if case == "history_length_over_L":
        row = row_with_history_length(frame, L, L)
        frame.loc[row, "history_length"] = L + 1
        expected = {"history_length_range"}
        name = f"history_length between 1 and {L}"
    elif case == "lists_longer_than_L":
        row = 0
        for column in SEQUENCE_SAMPLE_COLUMNS:
            values = frame.at[row, column]
            frame.at[row, column] = np.append(values, np.zeros(1, dtype=values.dtype))
        expected = {f"{c}_length" for c in SEQUENCE_SAMPLE_COLUMNS}
        name = f"history_items lists have length L={L}"
    else:
        row = 0
        frame.loc[row, "history_length"] = 0
        frame.at[row, "history_items"] = np.zeros(L, dtype=np.int64)
        frame.at[row, "history_timestamps"] = np.zeros(L, dtype=np.int64)
        frame.at[row, "history_mask"] = np.zeros(L, dtype=bool)
        expected = {"history_length_range"}
        name = f"history_length between 1 and {L}"
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == expected
    assert_fails_naming(result, next(iter(sorted(expected))), name)


def test_missing_column_fails_and_dependent_rules_are_not_evaluated() -> None:
    result = validate_training_set(make_frame().drop(columns=["label"]), SPEC)
    assert failed_rule_ids(result) == {"exists_label"}
    assert_fails_naming(result, "exists_label", "column label present (expect_column_to_exist on label)")
    assert any(line.startswith("labels in {0, 1}") for line in result.skipped_expectations)


def test_positive_rate_bounds_are_per_split() -> None:
    frame = make_frame()
    config = ValidationConfig(positive_rate_by_split={"valid": (0.3, 0.6)})
    result = validate_training_set(frame, SPEC, config)
    assert failed_rule_ids(result) == {"positive_rate_valid"}
    assert_fails_naming(result, "positive_rate_valid", "positive rate in split valid in [0.3, 0.6]")
    assert result.failed()[0].observed_value == pytest.approx(0.2)


def test_reports_name_failures_and_are_serialisable(tmp_path) -> None:
    frame = make_frame()
    frame.loc[1, "label"] = 2
    frame.loc[2, "split"] = "holdout"
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == {"label_binary", "split_allowed"}
    write_report(result, tmp_path / "out" / "report.html", tmp_path / "out" / "report.json")
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "FAIL" in page
    assert html.escape("labels in {0, 1} (expect_column_values_to_be_in_set on label)") in page
    assert "expect_column_values_to_be_in_set" in page and "holdout" in page
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["success"] is False and saved["failed_expectations"] == result.failed_expectations
    assert {e["status"] for e in saved["expectations"]} == {"PASS", "FAIL"}
    assert saved["great_expectations"]["success"] is False


def test_passing_report_says_pass(valid_result: ValidationResult) -> None:
    page = valid_result.render_html()
    assert "PASS" in page and "FAIL</span>" not in page
    json.dumps(valid_result.to_dict())


def test_config_is_validated_at_the_edge() -> None:
    with pytest.raises(ValueError, match="positive-rate"):
        ValidationConfig(min_positive_rate=0.7, max_positive_rate=0.6)
    config = ValidationConfig.from_spec(SPEC)
    assert (config.max_history_length, config.n_items, config.n_users) == (L, SPEC.n_items, SPEC.n_users)


def test_unreadable_list_contents_fail_as_not_evaluated() -> None:
    frame = make_frame()
    frame["history_items"] = [np.array(["x"] * L)] * len(frame)
    result = validate_training_set(frame, SPEC)
    assert not result.success and not result.failed()
    assert any("items_match_mask" in line for line in result.skipped_expectations)
    with pytest.raises(TrainingSetValidationError, match="not evaluated"):
        assert_valid(result)


def test_report_rows_are_readable_text_on_light_backgrounds(valid_result):
    """Status colours belong to the badges only: a passed row is dark text on white, not on dark green."""
    page = valid_result.render_html()
    assert ".badge.PASS{background:#2e7d32}" in page and "tr.PASS td{background:#fff}" in page
    assert "}.PASS{" not in page and "}.FAIL{" not in page


def test_negative_that_is_in_its_own_history_fails() -> None:
    frame = make_frame()
    row = int(np.flatnonzero((frame["label"] == 0).to_numpy())[0])
    frame.loc[row, "target_item"] = int(frame.at[row, "history_items"][0])
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == {"negative_not_in_history"}
    assert_fails_naming(result, "negative_not_in_history", "a negative target is never an item of its own history")
    (outcome,) = result.failed()
    assert {example["sample_row"] for example in outcome.examples} == {row}


def test_history_out_of_time_order_fails() -> None:
    frame = make_frame()
    row = row_with_history_length(frame, 2, L)
    stamps = frame.at[row, "history_timestamps"]
    stamps[0], stamps[1] = stamps[1], stamps[0]
    result = validate_training_set(frame, SPEC)
    assert failed_rule_ids(result) == {"history_oldest_first"}
    assert_fails_naming(result, "history_oldest_first", "history events oldest first")


def test_time_split_order_and_coverage_are_checked() -> None:
    frame = make_frame()
    config = ValidationConfig(time_ordered_splits=True, min_users_per_split=2)
    assert validate_training_set(frame, SPEC, config).success
    late = frame.index[frame["split"] == "train"][0]
    frame.loc[late, "target_timestamp"] = int(frame["target_timestamp"].max()) + 1  # a train target after valid
    result = validate_training_set(frame, SPEC, config)
    assert failed_rule_ids(result) == {"split_order_train_valid"}
    assert_fails_naming(result, "split_order_train_valid", "every train target at or before the first valid target")
    few_users = ValidationConfig(min_users_per_split=50)
    assert {"coverage_users_train", "coverage_users_valid"} <= failed_rule_ids(
        validate_training_set(make_frame(), SPEC, few_users)
    )


def test_data_docs_site_is_built(tmp_path) -> None:
    result = validate_training_set(make_frame(), SPEC, docs_dir=tmp_path / "docs")
    assert result.success
    assert (tmp_path / "docs" / "index.html").is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 3  # one validation page per batch: samples, history_events, negative_windows
