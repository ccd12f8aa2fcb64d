"""Submit the compiled training pipeline to a Kubeflow Pipelines endpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from longrec.pipeline.local import compile_pipeline
from longrec.pipeline.params import PipelineParams


def submit_pipeline(
    host: str,
    params: PipelineParams,
    experiment: str = "longrec",
    run_name: str | None = None,
    namespace: str | None = None,
    existing_token: str | None = None,
) -> str:
    """Compile, then create a run on the KFP API server at `host`; returns the run id."""
    import kfp

    client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "longrec-training.yaml")
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=params.arguments(),
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
        )
    return result.run_id
