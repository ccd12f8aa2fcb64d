"""Data-parallel training under ``torchrun``: DDP for dense parameters, an all-gather for sparse tables.

Launch (one process per GPU, or per CPU worker with gloo)::

    torchrun --standalone --nproc_per_node 2 -m longrec.train.distributed \\
        --training-set DIR --model din --output DIR [--epochs 3 --batch-size 1024 --lr 3e-3 --seed 0]

Every rank loads the whole training set and walks the same seeded permutation; each global batch of
``batch_size`` samples is cut into ``world_size`` contiguous parts, one per rank. A rank's loss is scaled
by ``world_size * local / global`` so that DDP's gradient average equals the gradient of the global
batch's mean loss, also when the last batch does not divide evenly: the run takes the same steps as a
single process with the same ``batch_size`` and seed (tests/test_distributed.py, to rounding).

Sparse gradients (LMN's value table, ``nn.Embedding(sparse=True)``) are left out of DDP — NCCL has no
sparse all-reduce — and averaged here by all-gathering each rank's coalesced rows, so SparseAdam still
updates only the rows some rank read. Batch statistics (Dice's mean/variance) are per rank, as BatchNorm
is under DDP without SyncBatchNorm; DDP broadcasts rank 0's running estimates each step. Validation runs
on rank 0 and its metrics are broadcast, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

__all__ = ["DataParallel", "active", "build_parser", "init_from_env", "main"]


def init_from_env(backend: str | None = None, timeout_s: int = 1800) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); False alone.

    The backend defaults to nccl when CUDA is available and gloo otherwise.
    """
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sparse_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and module.sparse
    }


@dataclass
class DataParallel:
    """The process group as the trainer sees it: batch sharding, gradient sync and rank-0 decisions."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def current(cls, device: torch.device) -> DataParallel | None:
        """The running process group, or None in a single process (the trainer then runs unchanged)."""
        if not active():
            return None
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP over the dense parameters; sparse tables are left out and start from rank 0's values."""
        sparse = _sparse_parameters(model)
        # Private but long-standing DDP hook (used by torch's own FSDP/DDP tests): parameters to skip.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(sparse))
        with torch.no_grad():
            for weight in sparse.values():
                dist.broadcast(weight.data, src=0)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], float]:
        """This rank's contiguous part of a global batch, and the factor its loss is scaled by."""
        total = int(batch["label"].shape[0])
        bounds = [total * r // self.world_size for r in range(self.world_size + 1)]
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        if hi == lo:
            # Fewer samples than ranks: run one sample with zero weight so every rank joins the all-reduce.
            lo, hi = 0, 1
            return {key: value[lo:hi] for key, value in batch.items()}, 0.0
        return {key: value[lo:hi] for key, value in batch.items()}, self.world_size * (hi - lo) / total

    def sync_sparse_gradients(self, model: nn.Module) -> None:
        """Average the sparse gradients of the tables DDP skips: all-gather every rank's coalesced rows."""
        for weight in _sparse_parameters(model).values():
            grad = weight.grad
            if grad is None:
                grad = torch.sparse_coo_tensor(
                    torch.zeros((1, 0), dtype=torch.long, device=weight.device),
                    weight.new_zeros((0, *weight.shape[1:])),
                    weight.shape,
                )
            grad = grad.coalesce()
            indices, values = grad.indices()[0], grad.values()
            counts = [torch.zeros(1, dtype=torch.long, device=weight.device) for _ in range(self.world_size)]
            dist.all_gather(counts, torch.tensor([len(indices)], device=weight.device))
            longest = max(int(c) for c in counts)
            padded_indices = torch.zeros(longest, dtype=torch.long, device=weight.device)
            padded_values = values.new_zeros((longest, *values.shape[1:]))
            padded_indices[: len(indices)] = indices
            padded_values[: len(values)] = values
            all_indices = [torch.empty_like(padded_indices) for _ in range(self.world_size)]
            all_values = [torch.empty_like(padded_values) for _ in range(self.world_size)]
            dist.all_gather(all_indices, padded_indices)
            dist.all_gather(all_values, padded_values)
            rows = torch.cat([i[: int(n)] for i, n in zip(all_indices, counts, strict=True)])
            vectors = torch.cat([v[: int(n)] for v, n in zip(all_values, counts, strict=True)])
            weight.grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), vectors / self.world_size, weight.shape
            ).coalesce()

    def all_sum(self, *values: float) -> list[float]:
        """Sum scalars over ranks (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value):
        """Rank 0's picklable value on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the torchrun entry point (also what longrec.pipeline.trainjob puts in a TrainJob)."""
    parser = argparse.ArgumentParser(
        prog="python -m longrec.train.distributed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--training-set", required=True, help="a training-set folder (samples.parquet, ...)")
    parser.add_argument("--model", required=True, help="a registered model name (din, imn, recblr, lmn)")
    parser.add_argument("--output", required=True, help="model folder written by rank 0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch (all ranks together)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default=None, help="gloo | nccl (default: nccl with CUDA, else gloo)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: train one model on a training-set folder; rank 0 writes the outputs."""
    from longrec.train.run import TrainConfig, train_from_training_set

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    init_from_env(args.backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device
    )
    try:
        # Every rank trains (same weights throughout); only rank 0's outputs are kept.
        with tempfile.TemporaryDirectory(prefix=f"longrec-rank{rank}-") as scratch:
            output = args.output if rank == 0 else scratch
            train_from_training_set(args.training_set, args.model, config, output)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
