"""CPU training is bit-for-bit reproducible across processes for every model: the gate compares runs, so
the same parameters must give the same weights (and the same table) on every run."""

import subprocess
import sys
import textwrap

import pytest

from longrec.models.registry import available_models

TRAIN_AND_HASH = textwrap.dedent(
    """
    import hashlib, sys
    import torch
    from longrec.data.schema import FeatureSpec
    from longrec.data.tensors import synthetic_sample_set
    from longrec.models.registry import build_model
    from longrec.seeding import derive_seed
    from longrec.train.trainer import TrainConfig, set_seed, train_model

    name = sys.argv[1]
    torch.set_num_threads(2)  # the pipeline's train task on these 2-core machines
    spec = FeatureSpec(n_users=30, n_items=60, max_history_length=12)
    train = synthetic_sample_set(spec, 512, seed=1)
    valid = synthetic_sample_set(spec, 256, seed=2)
    overrides = {"memory_slots": 4096} if name == "lmn" else None
    set_seed(derive_seed(0, "model-init"))
    model = build_model(name, spec, overrides)
    config = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0, device="cpu", progress=False)
    train_model(model, train, valid, config)
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    print(digest.hexdigest())
    """
)


def _train_hash(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_HASH, name], capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("name", available_models())
def test_training_is_bit_identical_across_two_processes(name):
    assert _train_hash(name) == _train_hash(name)
