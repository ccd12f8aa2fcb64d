"""Scoring a CTR model on a sample set: logits in order, and the CTR metrics of those logits."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from longrec.data.tensors import TensorSampleSet
from longrec.eval.ctr import ctr_metrics
from longrec.models.base import CTRModel

__all__ = ["evaluate_model", "predict"]


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    if device.type == "cpu":
        return batch
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


@torch.no_grad()
def predict(model: CTRModel, samples: TensorSampleSet, batch_size: int = 4096) -> np.ndarray:
    """Logits for every sample, in order, as float32 [N]; eval mode, no gradients (mode restored after)."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        outputs = [
            model(_to_device(batch, device)).float().cpu()
            for batch in samples.with_shared_on(device).batches(batch_size, shuffle=False)
        ]
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(outputs).numpy()


def evaluate_model(
    model: CTRModel, samples: TensorSampleSet, batch_size: int = 4096
) -> dict[str, float | int]:
    """``ctr_metrics`` (AUC, GAUC, LogLoss, ...) of ``model`` on ``samples``."""
    logits = predict(model, samples, batch_size)
    return ctr_metrics(samples["user_id"].numpy(), samples["label"].numpy(), logits)
