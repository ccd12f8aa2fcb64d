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
    tuning_trials: int,
    tuning_time_limit_minutes: float,
    model_settings: str,
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
        tuning_trials: Settings to search on validation AUC before keeping the best (0 = train once).
        tuning_time_limit_minutes: Start no new trial after this long (0 = no limit).
        model_settings: JSON {model: {knob: value}} of fixed settings (e.g. a Katib pick); this model's
            entry replaces the values above and the search starts from it.
        model: Output folder with model.pt (state dict + config) and train_result.json.
        metrics: Validation metrics of the best epoch.
    """
    import json

    from longrec.train.run import TrainConfig, train_from_training_set
    from longrec.train.tuning import apply_settings

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=learning_rate, seed=seed, device=device)
    fixed = json.loads(model_settings or "{}").get(model_name, {})
    config, overrides = apply_settings(model_name, fixed, config)
    result = train_from_training_set(
        training_set.path,
        model_name,
        config,
        model.path,
        model_overrides=overrides or None,
        tuning_budget=tuning_trials,
        tuning_time_limit_s=tuning_time_limit_minutes * 60,
    )
    model.metadata.update({"model_name": model_name, **result["summary"], **result["runtime"]})
    for key, value in result["valid_metrics"].items():
        metrics.log_metric(f"valid_{key}", float(value))
    tuning = result["tuning"]
    if tuning is not None:  # the run page shows the pick and every trial's validation AUC
        model.metadata["tuned_params"] = tuning["chosen_params"]
        model.metadata["tuning_trials"] = [
            {"params": t["params"], "valid_auc": t["valid_auc"]} for t in tuning["trials"]
        ]
        metrics.log_metric("tuning_trials_run", len(tuning["trials"]))
        for trial in tuning["trials"]:
            metrics.log_metric(f"tuning_trial_{trial['trial'] + 1}_valid_auc", float(trial["valid_auc"]))
