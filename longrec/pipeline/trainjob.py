"""A Kubeflow Trainer `TrainJob` that runs one model's training step data-parallel on several GPUs.

The job runs `torchrun -m longrec.train.distributed` (longrec/train/distributed.py) on `num_nodes` nodes
with `gpus_per_node` processes each. The `torch-distributed` ClusterTrainingRuntime that Kubeflow Trainer
installs sets torchrun's rendezvous through `PET_*` environment variables (nodes, processes per node,
node rank, master address), so the command carries no rendezvous flags. The training set is read from,
and the model folder written to, a ReadWriteMany claim mounted on every node (rank 0 writes).

    manifest = train_job_manifest(TrainJobSpec(name="din-ddp", model="din",
                                               training_set="/mnt/longrec-train/ts", output="/mnt/longrec-train/din"))
    Path("trainjob.yaml").write_text(to_yaml(manifest))   # kubectl apply -f trainjob.yaml

Volumes, node selector and tolerations go in `podTemplateOverrides` (Trainer v2.0/v2.1; v2.2 moved them
to `runtimePatches`), targeting the runtime's `node` job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
RUNTIME = "torch-distributed"
NODE_JOB = "node"  # the replicated job of the torch runtimes that runs the trainer
DEFAULT_IMAGE = "ghcr.io/longrec/longrec-python:0.1.0-cuda"  # infra/docker, CUDA variant
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class TrainJobSpec:
    """What one data-parallel training run needs; defaults match the pipeline's train task."""

    name: str  # TrainJob name (a DNS-1035 label, at most 63 characters)
    model: str  # registered model name: din, imn, recblr, lmn
    training_set: str  # training-set folder on the claim
    output: str  # model folder on the claim (written by rank 0)
    namespace: str = "kubeflow"
    image: str = DEFAULT_IMAGE
    num_nodes: int = 1
    gpus_per_node: int = 2  # one process per GPU (nccl)
    cpu_per_node: str = "8"
    memory_per_node: str = "64Gi"
    epochs: int = 3
    batch_size: int = 1024  # global batch, all ranks together
    learning_rate: float = 3e-3
    seed: int = 0
    claim: str = "longrec-training"  # ReadWriteMany PVC holding training sets and model folders
    mount_path: str = "/mnt/longrec-train"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    runtime: str = RUNTIME

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise ValueError(f"name {self.name!r} is not a valid Kubernetes name (lowercase, digits, '-')")
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("num_nodes and gpus_per_node must be >= 1")
        if self.batch_size % (self.num_nodes * self.gpus_per_node):
            raise ValueError(
                f"batch_size {self.batch_size} must divide evenly over "
                f"{self.num_nodes * self.gpus_per_node} processes"
            )
        for path in (self.training_set, self.output):
            if not path.startswith(self.mount_path.rstrip("/") + "/"):
                raise ValueError(f"{path!r} is not on the claim mounted at {self.mount_path}")


def trainer_command(spec: TrainJobSpec) -> list[str]:
    """torchrun running longrec's distributed entry point (rendezvous comes from the runtime's PET_* env)."""
    return [
        "torchrun",
        "-m",
        "longrec.train.distributed",
        "--training-set",
        spec.training_set,
        "--model",
        spec.model,
        "--output",
        spec.output,
        "--epochs",
        str(spec.epochs),
        "--batch-size",
        str(spec.batch_size),
        "--lr",
        str(spec.learning_rate),
        "--seed",
        str(spec.seed),
        "--backend",
        "nccl",
    ]


def train_job_manifest(spec: TrainJobSpec) -> dict:
    """The TrainJob as a dict (apply it with kubectl or the Kubernetes client)."""
    gpus = str(spec.gpus_per_node)
    resources = {
        "requests": {"cpu": spec.cpu_per_node, "memory": spec.memory_per_node, "nvidia.com/gpu": gpus},
        "limits": {"memory": spec.memory_per_node, "nvidia.com/gpu": gpus},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/name": "longrec-train", "longrec.dev/model": spec.model},
        },
        "spec": {
            "runtimeRef": {
                "name": spec.runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
            },
            "trainer": {
                "image": spec.image,
                "command": trainer_command(spec),
                "numNodes": spec.num_nodes,
                "numProcPerNode": spec.gpus_per_node,
                "resourcesPerNode": resources,
                "env": [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}],
            },
            "podTemplateOverrides": [
                {
                    "targetJobs": [{"name": NODE_JOB}],
                    "spec": {
                        "nodeSelector": dict(spec.node_selector),
                        "tolerations": [dict(t) for t in spec.tolerations],
                        "volumes": [{"name": "train", "persistentVolumeClaim": {"claimName": spec.claim}}],
                        "containers": [
                            {
                                "name": NODE_JOB,
                                "volumeMounts": [{"name": "train", "mountPath": spec.mount_path}],
                            }
                        ],
                    },
                }
            ],
        },
    }


def to_yaml(manifest: dict) -> str:
    """Block-style YAML, keys in manifest order."""
    return yaml.safe_dump(manifest, sort_keys=False)
