"""Validate a training-set folder: the pipeline's validate step and `longrec train` both call this."""

from __future__ import annotations

from pathlib import Path

from longrec.data.training_set import read_long_history_log, read_training_set
from longrec.validation.suite import ValidationConfig, assert_valid, validate_training_set, write_report


def validate_training_set_dir(
    training_set_dir: str | Path,
    report_html: str | Path,
    results_json: str | Path,
    config: ValidationConfig | None = None,
    docs_dir: str | Path | None = None,
) -> dict:
    """Run the suite, write both reports (and GE's Data Docs site into `docs_dir`), then raise
    TrainingSetValidationError if anything failed.

    Returns the summary (success, counts) when the training set passed.
    """
    import dataclasses

    frame, spec, meta = read_training_set(training_set_dir)
    config = config or ValidationConfig()
    sample_config = meta.get("sample_config", {})
    if sample_config.get("split") == "time":  # the time split orders the splits in time
        config = dataclasses.replace(config, time_ordered_splits=True)
    long_log = None
    if sample_config.get("memory_history_length"):  # built with a long view: check its windows too
        config = dataclasses.replace(config, memory_history_length=int(sample_config["memory_history_length"]))
        long_log = read_long_history_log(training_set_dir)
    result = validate_training_set(frame, spec, config, docs_dir=docs_dir, long_log=long_log)
    write_report(result, report_html, results_json)
    assert_valid(result)  # reports are on disk first, so a failed run still shows what failed
    return {
        "success": result.success,
        "n_expectations": result.statistics.get("n_expectations"),
        "n_rows": int(len(frame)),
    }
