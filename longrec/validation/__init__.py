"""Training-set validation: a Great Expectations suite over the sample frame, with HTML/JSON reports."""

from longrec.validation.suite import (
    ExpectationOutcome,
    TrainingSetValidationError,
    ValidationConfig,
    ValidationResult,
    assert_valid,
    validate_training_set,
    write_report,
)

__all__ = [
    "ExpectationOutcome",
    "TrainingSetValidationError",
    "ValidationConfig",
    "ValidationResult",
    "assert_valid",
    "validate_training_set",
    "write_report",
]
