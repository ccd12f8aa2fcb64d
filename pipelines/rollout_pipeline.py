"""Rollout pipeline (collect -> analyse -> decide): one step of a running A/B, meant to run on a schedule.

Compiled, it is an ordinary pipeline; `recurring_run_spec` wraps it into the body of the KFP API's
recurring-run object (POST /apis/v2beta1/recurringruns), so the Kubeflow UI shows it under Recurring Runs
with the cron schedule. `longrec rollout pipeline --output DIR --cron "0 */30 * * * *"` writes both."""

from kfp import dsl

from components.rollout_analyse import rollout_analyse
from components.rollout_collect import rollout_collect
from components.rollout_decide import rollout_decide

DEFAULT_CRON = "0 */30 * * * *"  # every 30 minutes (KFP's six-field cron, seconds first)


@dsl.pipeline(
    name="longrec-rollout",
    description="One step of an A/B rollout: collect the request log, analyse (mSPRT, SRM, guardrails, drift), "
    "then hold, ramp, promote or roll back.",
)
def rollout_pipeline(
    dataset: str = "ml-100k",
    state_dir: str = "",
    registry_dir: str = "",
    ranker_url: str = "",
    replay_requests: int = 0,
):
    """The longrec rollout pipeline.

    Args:
        dataset: Registry track of the running experiment.
        state_dir: Rollout state folder (a shared volume on a cluster); empty means the default.
        registry_dir: Model registry root; empty means the default.
        ranker_url: Base URL of the ranking service, for replayed traffic.
        replay_requests: Requests to replay per run (0 = analyse live traffic only).
    """
    collected = rollout_collect(
        dataset=dataset, state_dir=state_dir, ranker_url=ranker_url, replay_requests=replay_requests
    ).set_caching_options(False)
    analysed = rollout_analyse(
        dataset=dataset, state_dir=state_dir, requests=collected.outputs["requests"]
    ).set_caching_options(False)
    rollout_decide(
        dataset=dataset, state_dir=state_dir, registry_dir=registry_dir,
        step_inputs=analysed.outputs["step_inputs"],
    ).set_caching_options(False)  # fmt: skip


def recurring_run_spec(
    pipeline_spec: dict,
    *,
    cron: str = DEFAULT_CRON,
    arguments: dict | None = None,
    name: str = "longrec-rollout",
) -> dict:
    """The KFP v2beta1 RecurringRun body for a compiled pipeline: the cron trigger, one run at a time, no
    catch-up of missed runs (a late step should not be replayed many times over)."""
    from longrec.pipeline.submit import validate_cron

    validate_cron(cron)
    return {
        "display_name": f"{name} every step",
        "description": "Scheduled rollout step: collect -> analyse -> decide.",
        "pipeline_spec": pipeline_spec,
        "runtime_config": {"parameters": arguments or {}},
        "trigger": {"cron_schedule": {"cron": cron}},
        "max_concurrency": "1",
        "no_catchup": True,
        "mode": "ENABLE",
    }


def compile_rollout_pipeline(output_dir, *, cron: str = DEFAULT_CRON, arguments: dict | None = None) -> tuple:
    """Write rollout-pipeline.yaml (KFP IR, for a one-off run) and rollout-recurring-run.yaml (the recurring
    run with its schedule) into `output_dir`; returns both paths."""
    from pathlib import Path

    import yaml
    from kfp import compiler

    from longrec.pipeline.submit import validate_cron

    validate_cron(cron)  # before anything is written
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipeline_path = output_dir / "rollout-pipeline.yaml"
    compiler.Compiler().compile(rollout_pipeline, str(pipeline_path))
    documents = [d for d in yaml.safe_load_all(pipeline_path.read_text()) if d]
    # as KFP's own client sends it: the IR alone, or IR + platform spec when kfp-kubernetes added one
    spec = (
        documents[0]
        if len(documents) == 1
        else {"pipeline_spec": documents[0], "platform_spec": documents[1]}
    )
    recurring_path = output_dir / "rollout-recurring-run.yaml"
    recurring_path.write_text(
        yaml.safe_dump(recurring_run_spec(spec, cron=cron, arguments=arguments), sort_keys=False)
    )
    return pipeline_path, recurring_path
