"""Train one model on the validated training set."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.base import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_model(
    training_set: Input[Dataset],
    model_name: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train with early stopping on validation AUC and save the best checkpoint.

    Args:
        training_set: The validated training-set folder.
        model_name: A registered model name (din, ...).
        epochs: Maximum epochs.
        batch_size: Samples per step.
        learning_rate: Adam learning rate.
        seed: Seed of initialisation and shuffling.
        device: "auto" (CUDA when this task got a GPU), "cuda" or "cpu".
        model: Output folder with model.pt (state dict + config) and train_result.json.
        metrics: Validation metrics of the best epoch.
    """
    from longrec.train.run import TrainConfig, train_from_training_set

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=learning_rate, seed=seed, device=device)
    result = train_from_training_set(training_set.path, model_name, config, model.path)
    model.metadata.update({"model_name": model_name, **result["summary"], **result["runtime"]})
    for key, value in result["valid_metrics"].items():
        metrics.log_metric(f"valid_{key}", float(value))
