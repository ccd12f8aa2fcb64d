"""Data-parallel training: 2 gloo processes on loopback end with the parameters of one process that
trains on the same global batches with the same seed (DDP for dense weights, an all-gather for LMN's
sparse value table).

Exact up to rounding only where the objective is a mean over samples: the models run with PReLU (Dice's
batch statistics are per rank under DDP, as BatchNorm's are) and LMN with λ = 0 (its memory loss is a
mean over each rank's own reads; the value table still learns through the CTR loss).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# Reduction order differs (per-rank partial sums, then an all-reduce), so weights agree to rounding
# (seen: <= 6e-8); a bug (a missed or doubled gradient, a wrong shard weight) moves them by ~lr = 3e-3.
ATOL = 1e-6

TRAIN = textwrap.dedent(
    """
    import sys
    import torch
    from longrec.data.schema import FeatureSpec
    from longrec.data.tensors import synthetic_sample_set
    from longrec.models.registry import build_model
    from longrec.train.distributed import init_from_env
    from longrec.train.trainer import TrainConfig, set_seed, train_model

    name, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    init_from_env("gloo")
    spec = FeatureSpec(n_users=30, n_items=60, max_history_length=8)
    train = synthetic_sample_set(spec, 250, seed=1)  # batch 63: ranks get 31/32 samples, last batch 61
    valid = synthetic_sample_set(spec, 128, seed=2)
    overrides = {"embedding_dim": 8, "attention_hidden": (8,), "head_hidden": (16,), "activation": "prelu"}
    if name == "lmn":
        overrides |= {"memory_slots": 1024, "memory_key_dim": 8, "memory_value_dim": 8, "memory_top_k": 4}
        overrides["memory_loss_weight"] = 0.0
    set_seed(0)
    model = build_model(name, spec, overrides)
    init = {key: value.clone() for key, value in model.state_dict().items()}
    config = TrainConfig(epochs=2, batch_size=63, lr=3e-3, seed=0, device="cpu", patience=2, progress=False)
    result = train_model(model, train, valid, config)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save({"init": init, "state": model.state_dict(), "history": result.history}, out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(name: str, out: Path, world_size: int) -> tuple[list[subprocess.Popen], Path]:
    port = _free_port()
    processes = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "OMP_WAIT_POLICY": "PASSIVE",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        command = [sys.executable, "-c", TRAIN, name, str(out)]
        processes.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    return processes, out


def _result(launched: tuple[list[subprocess.Popen], Path]) -> dict:
    processes, out = launched
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("name", ["din", "lmn"])
def test_two_processes_match_one_with_the_same_global_batch(name: str, tmp_path: Path) -> None:
    # The single-process reference runs alongside the two ranks.
    single_run = _launch(name, tmp_path / "single.pt", world_size=1)
    double_run = _launch(name, tmp_path / "double.pt", world_size=2)
    single, double = _result(single_run), _result(double_run)
    assert single["state"].keys() == double["state"].keys()
    for key, expected in single["state"].items():
        torch.testing.assert_close(double["state"][key], expected, rtol=0, atol=ATOL, msg=key)
        if key in ("item_embedding.weight", "memory.values.weight"):  # training moved them (LMN: sparse)
            assert (expected - single["init"][key]).abs().max() > 100 * ATOL, key
    # Same epochs, same global loss and validation metrics (rank 0 validated, every rank took its result).
    assert len(double["history"]) == len(single["history"]) == 2
    for one, two in zip(single["history"], double["history"], strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-6)
        assert two["valid"]["auc"] == pytest.approx(one["valid"]["auc"], abs=1e-6)


def test_train_job_manifest_runs_the_distributed_entry_point() -> None:
    import kubernetes_validate
    import yaml

    from longrec.pipeline.trainjob import TrainJobSpec, to_yaml, train_job_manifest
    from longrec.train.distributed import build_parser

    spec = TrainJobSpec(
        name="din-ddp",
        model="din",
        training_set="/mnt/longrec-train/ts",
        output="/mnt/longrec-train/din",
        num_nodes=2,
        gpus_per_node=4,
    )
    manifest = yaml.safe_load(to_yaml(train_job_manifest(spec)))
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    assert manifest["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    # The command is torchrun on our entry point, and its arguments parse as that entry point's.
    assert trainer["command"][:3] == ["torchrun", "-m", "longrec.train.distributed"]
    args = build_parser().parse_args(trainer["command"][3:])
    assert (args.model, args.training_set, args.output, args.backend) == (
        "din",
        spec.training_set,
        spec.output,
        "nccl",
    )
    assert args.batch_size == 1024 and args.batch_size % 8 == 0

    # Pod-level overrides are core/v1 objects: check them against the Kubernetes schema as a Pod.
    (override,) = manifest["spec"]["podTemplateOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    pod_spec = {
        **{k: v for k, v in override["spec"].items() if k != "containers"},
        "containers": [
            {
                **override["spec"]["containers"][0],
                "image": trainer["image"],
                "command": trainer["command"],
                "resources": trainer["resourcesPerNode"],
                "env": trainer["env"],
            }
        ],
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, kubernetes_validate.utils.latest_version(), strict=True)
    mounts = {m["name"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert mounts == {v["name"] for v in pod_spec["volumes"]}

    with pytest.raises(ValueError, match="divide evenly"):
        TrainJobSpec(name="x", model="din", training_set="/mnt/longrec-train/a", output="/mnt/longrec-train/b",
                     gpus_per_node=3)  # fmt: skip
    with pytest.raises(ValueError, match="not on the claim"):
        TrainJobSpec(name="x", model="din", training_set="/data/a", output="/mnt/longrec-train/b")
