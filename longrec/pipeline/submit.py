"""Submit the compiled training pipeline to a Kubeflow Pipelines endpoint: one run now, or a recurring run
on a cron schedule (shown under "Recurring Runs" in the Kubeflow UI)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from longrec.pipeline.local import compile_pipeline
from longrec.pipeline.params import PipelineParams

__all__ = ["PIPELINE_SERVICE_ACCOUNT", "Submitted", "submit_pipeline", "validate_cron"]

logger = logging.getLogger(__name__)

# The service account infra/k8s/base/pipeline-rbac.yaml creates for the pipeline's pods.
PIPELINE_SERVICE_ACCOUNT = "longrec-pipeline-runner"


@dataclass(frozen=True)
class Submitted:
    """What the KFP API server created: a run, or a recurring run (``recurring`` is True)."""

    id: str
    experiment_id: str
    recurring: bool


def validate_cron(expression: str) -> str:
    """KFP's scheduler takes robfig/cron expressions with six fields (seconds first)."""
    fields = expression.split()
    if len(fields) != 6:
        raise ValueError(
            f"cron expression {expression!r} has {len(fields)} fields; KFP wants 6 "
            "(second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *' for 03:00 daily"
        )
    return expression


def submit_pipeline(
    host: str,
    params: PipelineParams,
    experiment: str = "longrec",
    run_name: str | None = None,
    namespace: str | None = None,
    existing_token: str | None = None,
    service_account: str | None = None,
    cron: str | None = None,
    max_concurrency: int = 1,
) -> Submitted:
    """Compile, then create a run (or, with ``cron``, a recurring run) on the KFP API server at ``host``."""
    import kfp

    if cron is not None:
        validate_cron(cron)
    client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
    name = run_name or (
        f"longrec-{params.dataset}" if cron is None else f"longrec-{params.dataset}-recurring"
    )
    kfp_output = io.StringIO()  # the client prints UI links; the CLI prints its own line
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(kfp_output):
        package = compile_pipeline(Path(tmp) / "longrec-training.yaml")
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        if cron is None:
            run = client.run_pipeline(
                experiment_id=experiment_id,
                job_name=name,
                pipeline_package_path=str(package),
                params=params.arguments(),
                service_account=service_account,
            )
            submitted = Submitted(run.run_id, experiment_id, recurring=False)
        else:
            # no_catchup: a paused schedule resumes with the latest interval, not a backlog of trainings.
            recurring = client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=max_concurrency,
                no_catchup=True,
                params=params.arguments(),
                pipeline_package_path=str(package),
                service_account=service_account,
            )
            submitted = Submitted(recurring.recurring_run_id, experiment_id, recurring=True)
    logger.info("kfp client: %s", kfp_output.getvalue().strip())
    return submitted
