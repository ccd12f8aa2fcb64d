"""Rollout pipeline, step 3: hold, ramp, promote (registry compare-and-swap) or roll back."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def rollout_decide(
    dataset: str, state_dir: str, registry_dir: str, step_inputs: Input[Artifact], decision: Output[Markdown]
) -> str:
    """Act on the analysis and return the action (hold, ramp, promote or rollback).

    Args:
        dataset: Registry track the experiment runs on.
        state_dir: Rollout state folder; empty means the default.
        registry_dir: Model registry root (promotions move its production pointer); empty means the default.
        step_inputs: The analysis folder written by rollout-analyse.
        decision: Output Markdown with the action and its reason.
    """
    import os
    from pathlib import Path

    from longrec.registry.store import ModelRegistry
    from longrec.rollout.decide import Rollout
    from longrec.rollout.operate import decide_collected

    run = os.environ.get("KFP_POD_NAME") or os.environ.get("HOSTNAME") or "kfp.local"
    rollout = Rollout(
        dataset, state_dir=state_dir or None, registry=ModelRegistry(registry_dir or None),
        actor=f"longrec-rollout pipeline ({run})",
    )  # fmt: skip
    rollout.recover()
    result = decide_collected(rollout, Path(step_inputs.path) / "step_inputs.json")
    with open(decision.path, "w") as handle:
        handle.write(f"**{result.action}** (candidate traffic now {result.traffic:g} %): {result.reason}\n")
    return result.action
