"""Package the model just registered as a servable Bento (ranker + memory shard services)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def package_bento(
    registered_tag: str,
    events: Input[Dataset],
    feature_repo: Input[Artifact],
    registry_dir: str,
    n_shards: int = 2,
) -> str:
    """Build the Bento of the registered model offline (`bentoml build`), its memory as one BentoML model
    per shard (LMN), and record the Bento tag next to the production pointer.

    Args:
        registered_tag: The model tag register-model put in production.
        events: The ingested dataset folder (for its track name).
        feature_repo: The Feast repo the service reads histories from (copied under the registry).
        registry_dir: Model registry root (also the BENTOML_HOME the Bento is built into); empty = default.
        n_shards: Memory shard services of an LMN model (fixed in the Bento).

    Returns:
        The Bento tag.
    """
    import json
    from pathlib import Path

    from longrec.registry.store import default_registry_root
    from longrec.serving.package import package_production

    dataset = json.loads((Path(events.path) / "dataset.json").read_text())
    record = package_production(
        registry_dir or default_registry_root(),
        dataset.get("track", dataset["name"]),
        feature_repo.path,
        n_shards,
        model_tag=registered_tag,
    )
    return record["bento_tag"]
