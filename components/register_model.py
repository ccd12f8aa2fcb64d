"""Register the promoted candidate in the BentoML model store and move the production pointer."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(candidate: Input[Model], events: Input[Dataset], registry_dir: str) -> str:
    """Save the candidate (weights, config, metrics, dataset fingerprint) and make it production.

    Args:
        candidate: The chosen model folder (with its test metrics).
        events: The ingested dataset folder (for its name and fingerprint).
        registry_dir: Model registry root; empty means the default location.

    Returns:
        The BentoML model tag now in production.
    """
    from longrec.registry.store import ModelRegistry

    registry = ModelRegistry(registry_dir or None)
    return registry.register_and_promote(candidate.path, events.path)
