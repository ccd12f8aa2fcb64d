"""Katib ``Experiment`` manifests: on a cluster, each model's tuning search as a Katib experiment built from
the same search space the local search draws from (``longrec.train.tuning``).

Each trial is a batch Job on the CUDA image running ``longrec tune trial``: it trains one model with the
trial's settings on a validated training set (train and valid splits only) and prints ``valid-auc=…`` and
``valid-logloss=…`` for Katib's stdout metrics collector. Katib's random search, seeded, maximises
validation AUC. ``longrec tune best`` turns the finished experiment's optimal trial back into the settings
``longrec tune trial`` and the pipeline's ``model_settings`` take.

Plain dicts, no Katib SDK at run time; ``tests/test_katib.py`` checks every manifest against the SDK's
models (``kubeflow-katib``) and the trial Job against the Kubernetes schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from longrec.train.trainer import TrainConfig
from longrec.train.tuning import SearchSpace, search_space

__all__ = [
    "KatibSettings",
    "OBJECTIVE_METRIC",
    "best_settings",
    "katib_experiment",
    "parameter_name",
    "parse_assignment",
]

API_VERSION = "kubeflow.org/v1beta1"
OBJECTIVE_METRIC = "valid-auc"
ADDITIONAL_METRICS = ["valid-logloss"]
PRIMARY_CONTAINER = "training-container"


@dataclass
class KatibSettings:
    """Where and how the trials run; the defaults match infra/k8s (namespace, volumes, GPU nodes)."""

    training_set: str = "/mnt/longrec-data/training-sets/ml-100k-L50"  # a validated training-set folder
    namespace: str = "longrec"
    image: str | None = None  # None: the pipeline's train image (the CUDA build of the base image)
    trials: int = 12
    parallel_trials: int = 2
    max_failed_trials: int = 3
    seed: int = 0
    batch_size: int = 1024
    gpus: int = 1
    datasets_pvc: str = "longrec-datasets"
    datasets_mount: str = "/mnt/longrec-data"
    service_account: str = "longrec-pipeline-runner"

    def __post_init__(self) -> None:
        if self.trials < 1 or self.parallel_trials < 1:
            raise ValueError("trials and parallel_trials must be >= 1")
        if self.max_failed_trials < 0 or self.gpus < 0:
            raise ValueError("max_failed_trials and gpus must be >= 0")
        if not self.training_set.startswith(self.datasets_mount.rstrip("/") + "/"):
            raise ValueError(
                f"training_set {self.training_set!r} must lie on the datasets volume ({self.datasets_mount}/...),"
                " the only folder a trial pod mounts"
            )


def parameter_name(knob: str) -> str:
    """A Katib parameter name for a config field (Katib wants DNS-1123-like names: weight_decay → weight-decay)."""
    return re.sub(r"[^a-z0-9-]", "-", knob.lower())


def _katib_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parameter(knob: str, values: list[Any]) -> dict[str, Any]:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return {
        "name": parameter_name(knob),
        "parameterType": "discrete" if numeric else "categorical",
        "feasibleSpace": {"list": [_katib_value(v) for v in values]},
    }


def katib_experiment(
    model_name: str, settings: KatibSettings | None = None, base: TrainConfig | None = None
) -> dict[str, Any]:
    """The Katib Experiment that tunes ``model_name`` over its search space (``search_space``)."""
    settings = settings or KatibSettings()
    base = base or TrainConfig(lr=3e-3, batch_size=settings.batch_size, seed=settings.seed)
    space: SearchSpace = search_space(model_name, base)
    from components.base import BASE_IMAGE

    image = settings.image or f"{BASE_IMAGE}-cuda"
    knobs = space.knobs()
    command = [
        "longrec",
        "tune",
        "trial",
        "--model",
        model_name,
        "--training-set",
        settings.training_set,
        "--seed",
        str(settings.seed),
        "--batch-size",
        str(settings.batch_size),
    ]
    for knob in knobs:
        command += ["--set", f"{knob}=${{trialParameters.{parameter_name(knob)}}}"]
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": settings.service_account,
        "restartPolicy": "Never",
        "containers": [
            {
                "name": PRIMARY_CONTAINER,
                "image": image,
                "command": command,
                "env": [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}],
                "resources": resources,
                "volumeMounts": [
                    {"name": "datasets", "mountPath": settings.datasets_mount, "readOnly": True}
                ],
            }
        ],
        "volumes": [
            {"name": "datasets", "persistentVolumeClaim": {"claimName": settings.datasets_pvc, "readOnly": True}}
        ],
    }
    if settings.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(settings.gpus)
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {
            "name": f"longrec-tune-{model_name}",
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/part-of": "longrec", "longrec/model": model_name},
        },
        "spec": {
            "objective": {
                "type": "maximize",
                "objectiveMetricName": OBJECTIVE_METRIC,
                "additionalMetricNames": list(ADDITIONAL_METRICS),
            },
            "algorithm": {
                "algorithmName": "random",
                "algorithmSettings": [{"name": "random_state", "value": str(settings.seed)}],
            },
            "parallelTrialCount": settings.parallel_trials,
            "maxTrialCount": settings.trials,
            "maxFailedTrialCount": settings.max_failed_trials,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [_parameter(knob, values) for knob, values in knobs.items()],
            "trialTemplate": {
                "primaryContainerName": PRIMARY_CONTAINER,
                "retain": False,
                "trialParameters": [
                    {
                        "name": parameter_name(knob),
                        "reference": parameter_name(knob),
                        "description": f"{model_name} {knob}",
                    }
                    for knob in knobs
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}},
                },
            },
        },
    }


def parse_assignment(model_name: str, pairs: list[str], base: TrainConfig | None = None) -> dict[str, Any]:
    """``["lr=0.003", "dropout=0.1", ...]`` (``--set`` or a Katib assignment) → typed settings, each checked
    against the model's search space (a value outside it is an error naming the knob and its choices)."""
    knobs = search_space(model_name, base).knobs()
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        knob = key.strip().replace("-", "_")
        if not sep or knob not in knobs:
            raise ValueError(f"expected KNOB=VALUE with KNOB one of {', '.join(knobs)}; got {pair!r}")
        matches = [v for v in knobs[knob] if _katib_value(v) == text.strip() or _same_number(v, text)]
        if not matches:
            choices = ", ".join(_katib_value(v) for v in knobs[knob])
            raise ValueError(f"{knob}={text!r} is not in {model_name}'s search space ({choices})")
        settings[knob] = matches[0]
    return settings


def _same_number(value: Any, text: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return float(text) == float(value)
    except ValueError:
        return False


def best_settings(experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{model: settings} of a finished experiment's optimal trial (``status.currentOptimalTrial``)."""
    if not isinstance(experiment, dict) or experiment.get("kind") != "Experiment":
        raise ValueError("not a Katib Experiment (kind: Experiment)")
    model_name = experiment.get("metadata", {}).get("labels", {}).get("longrec/model")
    if not model_name:
        raise ValueError("the experiment has no longrec/model label: it was not made by `longrec tune katib`")
    optimal = (experiment.get("status") or {}).get("currentOptimalTrial") or {}
    assignments = optimal.get("parameterAssignments") or []
    if not assignments:
        raise ValueError(f"experiment {experiment['metadata'].get('name')} has no optimal trial yet")
    knobs = {parameter_name(knob): knob for knob in search_space(model_name).knobs()}
    pairs = []
    for assignment in assignments:
        name = assignment.get("name")
        if name not in knobs:
            raise ValueError(f"the optimal trial sets {name!r}, which is not a knob of {model_name}")
        pairs.append(f"{knobs[name]}={assignment.get('value')}")
    return {model_name: parse_assignment(model_name, pairs)}
