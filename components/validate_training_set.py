"""Validate the training set with Great Expectations; a failure stops the pipeline."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_training_set(
    training_set: Input[Dataset],
    min_positive_rate: float,
    max_positive_rate: float,
    report: Output[HTML],
    results: Output[Artifact],
    data_docs: Output[Artifact],
):
    """Run the GE suites; write the reports, then fail the task if any expectation failed.

    Args:
        training_set: The training-set folder.
        min_positive_rate: Lowest share of positives a split may have.
        max_positive_rate: Highest share of positives a split may have.
        report: Output one-page pass/fail summary (the Kubeflow UI shows a single HTML file).
        results: Output JSON validation results.
        data_docs: Output folder with Great Expectations' Data Docs site (index.html): every expectation,
            its result and examples, per batch.
    """
    from longrec.validation.run import validate_training_set_dir
    from longrec.validation.suite import ValidationConfig

    config = ValidationConfig(min_positive_rate=min_positive_rate, max_positive_rate=max_positive_rate)
    # Raises TrainingSetValidationError naming the failed expectations, after writing both reports.
    summary = validate_training_set_dir(training_set.path, report.path, results.path, config, data_docs.path)
    results.metadata.update(summary)
