"""The training pipeline: ingest → features → training set → validate → train each model → evaluate
against DIN → gate on AUC → register. Compiles to IR YAML for the Kubeflow UI and runs with kfp.local."""

import os

from kfp import dsl, kubernetes

from components.base import BASE_IMAGE
from components.build_training_set import build_training_set
from components.evaluate_models import evaluate_models
from components.gate_promotion import gate_promotion
from components.ingest import ingest_dataset
from components.materialize_features import materialize_features
from components.package_bento import package_bento
from components.register_model import register_model
from components.train_model import train_model
from components.validate_training_set import validate_training_set

PIPELINE_NAME = "longrec-training"
# Cluster runs put every train task on one GPU of this type; kfp.local ignores both settings.
TRAIN_ACCELERATOR_TYPE = "nvidia.com/gpu"
TRAIN_ACCELERATOR_LIMIT = 1
TRAIN_RETRIES = 2
# Train tasks run the CUDA build of the component image (infra/docker/Dockerfile, TORCH_VARIANT=cuda), only
# on GPU nodes, tolerating their taint; every other task stays on the CPU image and CPU nodes.
TRAIN_IMAGE = os.environ.get("LONGREC_TRAIN_IMAGE", f"{BASE_IMAGE}-cuda")
TRAIN_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")
TRAIN_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The model registry's volume (infra/k8s/base/registry-pvc.yaml), mounted into every task that reads or
# moves registry state; $LONGREC_REGISTRY makes it the registry when `registry_dir` is left empty.
REGISTRY_PVC = os.environ.get("LONGREC_REGISTRY_PVC", "longrec-model-registry")
REGISTRY_MOUNT_PATH = "/mnt/longrec-registry"
# Event files for `dataset` on a cluster (infra/k8s/base/datasets-pvc.yaml), mounted into ingest only:
# pass dataset=/mnt/longrec-data/<file> to train on a file put there.
DATA_PVC = os.environ.get("LONGREC_DATA_PVC", "longrec-datasets")
DATA_MOUNT_PATH = "/mnt/longrec-data"


def use_registry_volume(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Mount the registry claim at REGISTRY_MOUNT_PATH and make it the default registry of ``task``."""
    kubernetes.mount_pvc(task, pvc_name=REGISTRY_PVC, mount_path=REGISTRY_MOUNT_PATH)
    return task.set_env_variable("LONGREC_REGISTRY", REGISTRY_MOUNT_PATH)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train long-sequence CTR models on Feast features, validate with Great Expectations, "
    "compare against DIN and promote on AUC.",
)
def training_pipeline(
    dataset: str = "ml-100k",
    models: list[str] = ["din", "imn", "recblr", "lmn"],  # noqa: B006 - KFP reads the default from the signature
    max_history_length: int = 50,
    memory_history_length: int = 0,
    epochs: int = 3,
    batch_size: int = 1024,
    learning_rate: float = 0.003,
    tuning_trials: int = 0,
    tuning_time_limit_minutes: float = 0.0,
    model_settings: str = "",
    seed: int = 0,
    split: str = "time",
    train_negatives: int = 1,
    eval_negatives: int = 4,
    negative_sampling: str = "uniform",
    max_events: int = 0,
    min_positive_rate: float = 0.05,
    max_positive_rate: float = 0.6,
    auc_floor: float = 0.70,
    min_auc_lift: float = 0.0,
    max_logloss_increase: float = 0.01,
    device: str = "auto",
    registry_dir: str = "",
):
    """The longrec training pipeline (parameters are shown in the Kubeflow UI run form).

    Args:
        dataset: Built-in dataset (ml-100k, dslabs-movielens) or a path to a user,item,timestamp file.
        models: Models to train, each in its own GPU task (din, imn, recblr, lmn); DIN is the baseline.
        max_history_length: History length L.
        memory_history_length: Long horizon L_long for LMN's memory writes: each sample's last L_long
            events, read from Feast for training only (serving reads L); 0 = off, else >= L.
        epochs: Maximum training epochs (early stopping on validation AUC).
        batch_size: Training batch size.
        learning_rate: Adam learning rate.
        tuning_trials: Per model, settings searched on validation AUC before training (learning rate,
            epochs, patience, weight decay, dropout and one model knob); 0 = the fixed settings above.
        tuning_time_limit_minutes: Per model, start no new tuning trial after this long (0 = no limit).
        model_settings: Fixed settings per model as JSON, e.g. {"din": {"lr": 0.005, "dropout": 0.1}}
            (`longrec tune best` prints a Katib experiment's pick in this form); empty = none.
        seed: Seed of sampling, initialisation and shuffling.
        split: "time" (80/10/10 of the time range) or "leave_one_out".
        train_negatives: Negatives per positive in train.
        eval_negatives: Negatives per positive in valid/test.
        negative_sampling: "uniform" or "popularity".
        max_events: Keep whole users up to this many events (0 = all); for smoke runs.
        min_positive_rate: Validation: lowest share of positives in any split.
        max_positive_rate: Validation: highest share of positives in any split.
        auc_floor: Minimum test AUC to promote.
        min_auc_lift: The lower bound of the paired AUC-lift interval over production must exceed this.
        max_logloss_increase: Largest tolerated test-LogLoss increase over production (calibration guardrail).
        device: Training device: "auto" (CUDA when the task has a GPU), "cuda" or "cpu".
        registry_dir: Model registry root (a shared volume on a cluster); empty = default.
    """
    ingest_task = ingest_dataset(dataset=dataset, max_events=max_events)
    kubernetes.mount_pvc(ingest_task, pvc_name=DATA_PVC, mount_path=DATA_MOUNT_PATH)
    features_task = materialize_features(
        events=ingest_task.outputs["events"], max_history_length=max_history_length
    )
    samples_task = build_training_set(
        events=ingest_task.outputs["events"],
        feature_repo=features_task.outputs["feature_repo"],
        max_history_length=max_history_length,
        memory_history_length=memory_history_length,
        split=split,
        train_negatives=train_negatives,
        eval_negatives=eval_negatives,
        negative_sampling=negative_sampling,
        seed=seed,
    )
    validate_task = validate_training_set(
        training_set=samples_task.outputs["training_set"],
        min_positive_rate=min_positive_rate,
        max_positive_rate=max_positive_rate,
    )

    with dsl.ParallelFor(models) as model_name:
        train_task = train_model(
            training_set=samples_task.outputs["training_set"],
            model_name=model_name,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            device=device,
            tuning_trials=tuning_trials,
            tuning_time_limit_minutes=tuning_time_limit_minutes,
            model_settings=model_settings,
        ).after(validate_task)
        train_task.set_accelerator_type(TRAIN_ACCELERATOR_TYPE).set_accelerator_limit(TRAIN_ACCELERATOR_LIMIT)
        train_task.set_cpu_request("2").set_memory_request("8G")
        train_task.set_container_image(TRAIN_IMAGE)
        kubernetes.add_node_selector(train_task, *TRAIN_NODE_SELECTOR)
        kubernetes.add_toleration(train_task, **TRAIN_TOLERATION)
        # A preempted GPU node or a lost pod is worth another try; training is seeded, so a retry is the same run.
        train_task.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0)

    evaluate_task = evaluate_models(
        training_set=samples_task.outputs["training_set"],
        models=dsl.Collected(train_task.outputs["model"]),
        registry_dir=registry_dir,
    )
    # Tasks that read or move registry state must never be served from cache: production may have moved.
    evaluate_task.set_caching_options(False)
    use_registry_volume(evaluate_task)
    gate_task = gate_promotion(
        gate_inputs=evaluate_task.outputs["gate_inputs"],
        auc_floor=auc_floor,
        min_auc_lift=min_auc_lift,
        max_logloss_increase=max_logloss_increase,
    )
    gate_task.set_caching_options(False)
    use_registry_volume(gate_task)
    with dsl.If(gate_task.outputs["Output"] == "promote", name="auc-gate-passed"):
        register_task = register_model(
            candidate=evaluate_task.outputs["candidate"],
            events=ingest_task.outputs["events"],
            decision_json=gate_task.outputs["decision_json"],
            registry_dir=registry_dir,
        )
        register_task.set_caching_options(False)
        use_registry_volume(register_task)
        package_task = package_bento(
            registered_tag=register_task.output,
            events=ingest_task.outputs["events"],
            feature_repo=features_task.outputs["feature_repo"],
            registry_dir=registry_dir,
        )
        package_task.set_caching_options(False)
        use_registry_volume(package_task)
