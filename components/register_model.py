"""Register the promoted candidate in the BentoML model store and move the production pointer."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(
    candidate: Input[Model], events: Input[Dataset], decision_json: Input[Artifact], registry_dir: str
) -> str:
    """Save the candidate (weights, config, metrics, dataset fingerprint) and make it production — only if
    production still points where the evaluation saw it (compare-and-swap); else the task fails, saying so.

    Args:
        candidate: The chosen model folder (with its test metrics).
        events: The ingested dataset folder (for its name, track and fingerprint).
        decision_json: The gate's decision, with the production tag it was made against.
        registry_dir: Model registry root; empty means the default location.

    Returns:
        The BentoML model tag now in production.
    """
    import json
    import os

    from longrec.registry.store import ModelRegistry

    with open(decision_json.path) as handle:
        decision = json.load(handle)
    if decision.get("verdict") != "promote":
        raise RuntimeError(
            f"register-model ran on a {decision.get('verdict')!r} decision; nothing registered"
        )
    registry = ModelRegistry(registry_dir or None)
    # The registry root is a BentoML home: write the version in this process, not in a child.
    os.environ.setdefault("BENTOML_HOME", str(registry.root))
    run = os.environ.get("KFP_POD_NAME") or os.environ.get("HOSTNAME") or "kfp.local"
    return registry.register_and_promote(
        candidate.path,
        events.path,
        expected_current=decision.get("production_tag"),
        reason="; ".join(decision.get("reasons", [])),
        actor=f"longrec-training pipeline ({run})",
    )
