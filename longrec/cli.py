"""The `longrec` command line: run the pipeline locally, compile/submit it, train and evaluate directly."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="longrec: long-sequence recommendation on Kubeflow."
)
pipeline_app = typer.Typer(no_args_is_help=True, help="Compile or submit the KFP training pipeline.")
app.add_typer(pipeline_app, name="pipeline")


def _mount_experiments() -> None:
    # Experiment commands live beside their library code; they are mounted here so `longrec --help` lists them.
    from longrec.experiments.imn_ablation import ablate_app
    from longrec.experiments.nextitem_cli import nextitem_app

    app.add_typer(ablate_app, name="ablate", help="Ablation studies: `longrec ablate imn ...`.")
    app.add_typer(nextitem_app, name="nextitem", help="Next-item ranking (RecBLR, SASRec): HR/NDCG/MRR@K.")
    from longrec.rollout.cli import rollout_app

    app.add_typer(
        rollout_app, name="rollout", help="A/B rollout: start, status, step, promote, rollback, report."
    )
    from longrec.pipeline.tune_cli import tune_app
    from longrec.registry.cli import registry_app

    app.add_typer(tune_app, name="tune", help="Tuning on a cluster: Katib experiments and their trials.")

    app.add_typer(registry_app, name="registry")


_mount_experiments()

DEFAULT_HOME = Path(os.environ.get("LONGREC_HOME", ".longrec"))


def fail(message: str, code: int = 2) -> None:
    """Print one clear line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def _params(remote: bool = False, **values) -> PipelineParams:  # noqa: F821
    from pydantic import ValidationError

    from longrec.pipeline.params import PipelineParams, format_validation_error

    values["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    try:
        return PipelineParams.model_validate(values, context={"remote": remote})
    except ValidationError as error:
        fail(format_validation_error(error))


# Options shared by `run` and `pipeline submit` (same names and defaults as the pipeline's parameters).
DatasetOpt = typer.Option(
    "ml-100k", help="ml-100k, dslabs-movielens, or a user,item,timestamp CSV/parquet path."
)
ModelsOpt = typer.Option("din,imn,recblr,lmn", help="Comma-separated models to train (DIN is the baseline).")
LengthOpt = typer.Option(50, "--max-history-length", "-L", help="History length L.")
LongLengthOpt = typer.Option(
    0,
    "--memory-history-length",
    help="L_long: LMN also writes its memory from each sample's last L_long events (training only; "
    "serving reads L). 0 = off.",
)
EpochsOpt = typer.Option(3, help="Maximum epochs (early stopping on validation AUC).")
MaxEventsOpt = typer.Option(0, help="Keep whole users up to this many events (0 = all).")
FloorOpt = typer.Option(0.70, help="Minimum test AUC to promote.")
LiftOpt = typer.Option(
    0.0, help="The lower bound of the paired AUC-lift interval over production must exceed this."
)
LoglossOpt = typer.Option(0.01, help="Largest tolerated test-LogLoss increase over production.")
DeviceOpt = typer.Option("auto", help="Training device: auto (CUDA when present), cuda or cpu.")
SplitOpt = typer.Option("time", help="time (80/10/10 of the time range) or leave_one_out.")
SamplingOpt = typer.Option("uniform", help="Negative sampling: uniform or popularity.")
SeedOpt = typer.Option(0, help="Seed of sampling and training.")
BatchOpt = typer.Option(1024, help="Training batch size.")
LrOpt = typer.Option(0.003, help="Adam learning rate.")
TrialsOpt = typer.Option(
    0,
    help="Per model, settings searched on validation AUC first (lr, epochs, patience, weight decay, dropout, "
    "one model knob); 0 = train once with the fixed settings.",
)
TuningTimeOpt = typer.Option(0.0, help="Per model, start no new tuning trial after this many minutes (0 = none).")
SettingsOpt = typer.Option(
    "",
    help='Fixed settings per model as JSON, e.g. \'{"din": {"lr": 0.005, "dropout": 0.1}}\' '
    "(`longrec tune best` prints a Katib pick this way).",
)


@app.command()
def run(
    dataset: str = DatasetOpt,
    models: str = ModelsOpt,
    max_history_length: int = LengthOpt,
    memory_history_length: int = LongLengthOpt,
    epochs: int = EpochsOpt,
    max_events: int = MaxEventsOpt,
    auc_floor: float = FloorOpt,
    min_auc_lift: float = LiftOpt,
    max_logloss_increase: float = LoglossOpt,
    device: str = DeviceOpt,
    split: str = SplitOpt,
    negative_sampling: str = SamplingOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    tuning_trials: int = TrialsOpt,
    tuning_time_limit_minutes: float = TuningTimeOpt,
    model_settings: str = SettingsOpt,
    runs_dir: Path = typer.Option(DEFAULT_HOME / "runs", help="Where run folders go."),
    registry_dir: Path = typer.Option(DEFAULT_HOME / "registry", help="Model registry root."),
    serve_demo: bool = typer.Option(
        True, help="End by serving the production model and ranking a few test-period users."
    ),
    ab_demo: bool = typer.Option(
        True,
        help="Then run a short replayed A/B of the production model against the model it replaced (or this "
        "run's DIN) through the served ranker, and print the rollout's decisions.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole training pipeline locally (kfp.local) and print the comparison and the decision."""
    _setup_logging(verbose)
    params = _params(
        dataset=dataset,
        models=models,
        max_history_length=max_history_length,
        memory_history_length=memory_history_length,
        epochs=epochs,
        max_events=max_events,
        auc_floor=auc_floor,
        min_auc_lift=min_auc_lift,
        max_logloss_increase=max_logloss_increase,
        device=device,
        split=split,
        negative_sampling=negative_sampling,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        tuning_trials=tuning_trials,
        tuning_time_limit_minutes=tuning_time_limit_minutes,
        model_settings=model_settings,
        registry_dir=str(registry_dir.resolve()),
    )
    from longrec.data.datasets import DatasetError, load_dataset

    if params.dataset not in ("ml-100k", "dslabs-movielens", "ml-latest-small"):
        try:  # read a user file once up front so a broken one fails here, not three tasks in
            load_dataset(params.dataset, max_events=params.max_events or None)
        except DatasetError as error:
            fail(str(error))
    from longrec.pipeline.local import run_local

    summary = run_local(params, runs_dir)
    typer.echo("")
    if summary.comparison_md:
        typer.echo(summary.comparison_md)
    if summary.decision_md:
        typer.echo(summary.decision_md)
    if summary.production_tag:
        typer.echo(f"production model: {summary.production_tag}")
    typer.echo(f"run folder: {summary.run_dir}  (open {summary.run_dir / 'index.html'})")
    typer.echo(f"wall time: {summary.wall_seconds:.0f} s")
    if summary.status != "succeeded":
        fail(f"pipeline failed: {summary.failure}", code=1)
    if serve_demo:
        from longrec.serving.run import showcase_run

        typer.echo("")
        showcase_run(summary.run_dir, registry_dir.resolve(), echo=typer.echo)
    if ab_demo:
        from longrec.pipeline.ab_demo import replayed_ab_after_run

        typer.echo("")
        replayed_ab_after_run(summary.run_dir, registry_dir.resolve(), echo=typer.echo)


@pipeline_app.command("compile")
def compile_(
    output: Path = typer.Option(Path("longrec-training.yaml"), "--output", "-o", help="IR YAML path."),
) -> None:
    """Compile the training pipeline to KFP IR YAML (upload it in the Kubeflow UI)."""
    from longrec.pipeline.local import compile_pipeline

    path = compile_pipeline(output)
    typer.echo(f"compiled {path}")


@pipeline_app.command("submit")
def submit(
    host: str = typer.Option(..., help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline."),
    experiment: str = typer.Option("longrec", help="KFP experiment name."),
    run_name: str = typer.Option(None, help="Run name (default: KFP's)."),
    namespace: str = typer.Option(None, help="Kubeflow namespace (multi-user deployments)."),
    service_account: str = typer.Option(
        None,
        help="Service account of the run's pods (infra/k8s creates longrec-pipeline-runner); default: KFP's.",
    ),
    cron: str = typer.Option(
        None,
        help="Create a recurring run on this 6-field cron schedule (e.g. '0 0 3 * * *') instead of one run.",
    ),
    token: str = typer.Option(None, envvar="KF_PIPELINES_TOKEN", help="Bearer token for the KFP API."),
    dataset: str = DatasetOpt,
    models: str = ModelsOpt,
    max_history_length: int = LengthOpt,
    memory_history_length: int = LongLengthOpt,
    epochs: int = EpochsOpt,
    max_events: int = MaxEventsOpt,
    auc_floor: float = FloorOpt,
    min_auc_lift: float = LiftOpt,
    max_logloss_increase: float = LoglossOpt,
    device: str = DeviceOpt,
    split: str = SplitOpt,
    negative_sampling: str = SamplingOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    tuning_trials: int = TrialsOpt,
    tuning_time_limit_minutes: float = TuningTimeOpt,
    model_settings: str = SettingsOpt,
    train_negatives: int = typer.Option(1, help="Negatives per positive in train."),
    eval_negatives: int = typer.Option(4, help="Negatives per positive in valid/test."),
    min_positive_rate: float = typer.Option(0.05, help="Validation: lowest share of positives in any split."),
    max_positive_rate: float = typer.Option(0.6, help="Validation: highest share of positives in any split."),
    registry_dir: str = typer.Option(
        "", help="Registry root inside the cluster; empty = the registry volume the pipeline mounts."
    ),
) -> None:
    """Submit a pipeline run (or, with --cron, a recurring run) to a Kubeflow Pipelines cluster."""
    _setup_logging(False)
    # A dataset path is read inside the cluster, so it is not checked for existence here.
    params = _params(
        remote=True,
        dataset=dataset,
        models=models,
        max_history_length=max_history_length,
        memory_history_length=memory_history_length,
        epochs=epochs,
        max_events=max_events,
        auc_floor=auc_floor,
        min_auc_lift=min_auc_lift,
        max_logloss_increase=max_logloss_increase,
        device=device,
        split=split,
        negative_sampling=negative_sampling,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        tuning_trials=tuning_trials,
        tuning_time_limit_minutes=tuning_time_limit_minutes,
        model_settings=model_settings,
        train_negatives=train_negatives,
        eval_negatives=eval_negatives,
        min_positive_rate=min_positive_rate,
        max_positive_rate=max_positive_rate,
        registry_dir=registry_dir,
    )
    from longrec.pipeline.submit import submit_pipeline, validate_cron

    if cron is not None:
        try:
            validate_cron(cron)
        except ValueError as error:
            fail(str(error))
    try:
        submitted = submit_pipeline(
            host,
            params,
            experiment=experiment,
            run_name=run_name,
            namespace=namespace,
            existing_token=token,
            service_account=service_account,
            cron=cron,
        )
    except Exception as error:  # connection and API errors: one line, not a traceback
        fail(f"could not submit to {host}: {error}", code=1)
    kind = "recurring run" if submitted.recurring else "run"
    typer.echo(f"submitted {kind} {submitted.id} to {host} (experiment {submitted.experiment_id})")


@app.command()
def train(
    dataset: str = DatasetOpt,
    model: str = typer.Option("din", help="Model to train."),
    max_history_length: int = LengthOpt,
    memory_history_length: int = LongLengthOpt,
    epochs: int = EpochsOpt,
    max_events: int = MaxEventsOpt,
    split: str = SplitOpt,
    negative_sampling: str = SamplingOpt,
    seed: int = SeedOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    tuning_trials: int = TrialsOpt,
    tuning_time_limit_minutes: float = TuningTimeOpt,
    model_settings: str = SettingsOpt,
    output: Path = typer.Option(DEFAULT_HOME / "models", help="Output folder (model + training set)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train one model directly (no pipeline, histories from events) and print its test metrics."""
    _setup_logging(verbose)
    params = _params(
        dataset=dataset,
        models=model,
        max_history_length=max_history_length,
        memory_history_length=memory_history_length,
        epochs=epochs,
        max_events=max_events,
        split=split,
        negative_sampling=negative_sampling,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        tuning_trials=tuning_trials,
        tuning_time_limit_minutes=tuning_time_limit_minutes,
        model_settings=model_settings,
    )
    from longrec.data.datasets import DatasetError
    from longrec.pipeline.direct import train_direct

    try:
        result = train_direct(params, output)
    except DatasetError as error:
        fail(str(error))
    typer.echo(json.dumps(result, indent=2))


@app.command()
def serve(
    tag: str = typer.Option(None, help="Serve this registered model tag (see `longrec registry list`)."),
    dataset: str = typer.Option(None, help="Serve the production model of this dataset (track)."),
    port: int = typer.Option(3000, help="HTTP port of the ranker."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 for every interface)."),
    registry_dir: Path = typer.Option(DEFAULT_HOME / "registry", help="Model registry root."),
    feature_repo: Path = typer.Option(
        None,
        help="Feast repo the ranker reads user histories from (default: the one recorded with the "
        "dataset's Bento). Without one every user is ranked with an empty history.",
    ),
    feature_store_yaml: Path = typer.Option(
        None,
        help="Feast config of the online store, default <feature-repo>/feature_store.yaml (SQLite). For "
        "Redis: a feature_store.yaml with `online_store: {type: redis, connection_string: "
        "${REDIS_CONNECTION_STRING}}` (as feature_repo/feature_store.redis.yaml), materialized into that "
        "Redis, and REDIS_CONNECTION_STRING=host:port exported before `longrec serve`.",
    ),
    shards: int = typer.Option(2, min=1, help="Memory shard services of an LMN model."),
    shard_timeout: float = typer.Option(
        None, help="Seconds a memory gather may take before its slots read as zero."
    ),
    bento: bool = typer.Option(True, help="Serve the recorded Bento when one was built for the model."),
    threads: int = typer.Option(
        None,
        min=0,
        help="The ranker's torch intra-op threads (default 0: measured at start-up with the attention kernel's, "
        "see --attention-threads; memory shards use one). Same as LONGREC_TORCH_THREADS.",
    ),
    attention_threads: int = typer.Option(
        None,
        min=0,
        help="The fused attention kernel's own threads (DIN, LMN, IMN) (default 0: chosen at start-up with "
        "--threads, the fastest of 1 for both, every usable CPU for both, and 1 for torch with every CPU for "
        "the kernel; with --threads N alone, N). Same as LONGREC_ATTENTION_THREADS.",
    ),
) -> None:
    """Serve a registered model (the production one of --dataset, or --tag) with its shard services."""
    _setup_logging(False)
    if threads is not None:  # the served process reads it over its config (a Bento's included)
        os.environ["LONGREC_TORCH_THREADS"] = str(threads)
    if attention_threads is not None:
        os.environ["LONGREC_ATTENTION_THREADS"] = str(attention_threads)
    if (tag is None) == (dataset is None):
        fail("give exactly one of --tag and --dataset")
    for path in (feature_repo, feature_store_yaml):
        if path is not None and not path.exists():
            fail(f"{path} does not exist")
    from longrec.registry.store import RegistryError
    from longrec.serving.process import ServeError
    from longrec.serving.run import resolve_target

    try:
        target = resolve_target(
            registry_dir, tag, dataset, feature_repo, feature_store_yaml, shards, shard_timeout, bento
        )
    except (RegistryError, ValueError) as error:
        fail(str(error))
    process = target.process(registry_dir, port, host=host)

    def stop_on_term(*_) -> None:  # TERM stops the service as Ctrl-C does, never orphaning it
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, stop_on_term)
    typer.echo(
        f"serving {target.model_tag}" + (f" from Bento {target.bento_tag}" if target.bento_tag else "")
    )
    try:
        process.start()
        process.wait_ready()
        typer.echo(f"ready: POST {process.url}/rank  (GET /healthz /readyz /metrics; Ctrl-C stops)")
        process.process.wait()
    except KeyboardInterrupt:
        pass
    except ServeError as error:
        fail(str(error), code=1)
    finally:
        process.stop()


@app.command()
def evaluate(
    model_dirs: list[Path] = typer.Argument(..., help="Trained model folders (each with model.pt)."),
    training_set: Path = typer.Option(..., help="Training-set folder whose test split is scored."),
    output: Path = typer.Option(None, help="Folder for comparison.md / .html / metrics.json."),
) -> None:
    """Score models on the test split of a training set and print the comparison table."""
    _setup_logging(False)
    for path in [*model_dirs, training_set]:
        if not path.exists():
            fail(f"{path} does not exist")
    from longrec.eval.compare import compare_models

    output = output or Path(training_set).parent / "evaluation"
    output.mkdir(parents=True, exist_ok=True)
    result = compare_models(
        training_set,
        model_dirs,
        comparison_md=output / "comparison.md",
        report_html=output / "comparison.html",
        metrics_json=output / "metrics.json",
    )
    typer.echo(result.markdown)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
