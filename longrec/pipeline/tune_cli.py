"""``longrec tune``: the cluster half of tuning. ``katib`` writes a model's Katib Experiment, ``trial`` is
what each Katib trial runs, ``best`` turns a finished experiment into the pipeline's ``model_settings``.

The local half is the pipeline's ``tuning_trials`` parameter (``longrec run --tuning-trials N``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer
import yaml

__all__ = ["tune_app"]

tune_app = typer.Typer(no_args_is_help=True, help="Katib experiments over the models' search spaces.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@tune_app.command("katib")
def katib(
    model: str = typer.Option(..., help="Model whose search space the experiment explores."),
    training_set: str = typer.Option(
        "/mnt/longrec-data/training-sets/ml-100k-L50",
        help="Validated training-set folder on the datasets volume (copy a pipeline run's "
        "build-training-set output there).",
    ),
    trials: int = typer.Option(12, help="Katib maxTrialCount: the search budget."),
    parallel_trials: int = typer.Option(2, help="Trials running at once (one GPU each)."),
    seed: int = typer.Option(0, help="Seed of the trials' training and of Katib's random search."),
    namespace: str = typer.Option("longrec", help="Namespace of the experiment and its trial Jobs."),
    image: str = typer.Option(None, help="Trial image (default: the pipeline's CUDA train image)."),
    gpus: int = typer.Option(1, help="GPUs per trial (0: CPU nodes)."),
    output: Path = typer.Option(None, help="Write the YAML here instead of stdout."),
) -> None:
    """Print (or write) the Katib Experiment that tunes MODEL on validation AUC."""
    from longrec.pipeline.katib import KatibSettings, katib_experiment

    try:
        settings = KatibSettings(
            training_set=training_set,
            namespace=namespace,
            image=image,
            trials=trials,
            parallel_trials=parallel_trials,
            seed=seed,
            gpus=gpus,
        )
        manifest = katib_experiment(model, settings)
    except ValueError as error:
        _fail(str(error))
    text = yaml.safe_dump(manifest, sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output} (kubectl apply -f {output})")


@tune_app.command("trial")
def trial(
    model: str = typer.Option(..., help="Model to train."),
    training_set: Path = typer.Option(..., help="Validated training-set folder."),
    setting: list[str] = typer.Option([], "--set", help="KNOB=VALUE from the model's search space; repeat."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
    batch_size: int = typer.Option(1024, help="Training batch size."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cuda or cpu."),
    output: Path = typer.Option(None, help="Keep the trained model here (default: discarded)."),
) -> None:
    """Train MODEL once with the given settings on train/valid; print valid-auc=… for Katib's collector."""
    from longrec.pipeline.katib import parse_assignment
    from longrec.train.run import TrainConfig, train_from_training_set
    from longrec.train.tuning import apply_settings

    base = TrainConfig(lr=3e-3, batch_size=batch_size, seed=seed, device=device, progress=False)
    try:
        settings = parse_assignment(model, setting, base)
        config, overrides = apply_settings(model, settings, base)
    except ValueError as error:
        _fail(str(error))
    with tempfile.TemporaryDirectory() as scratch:
        target = output if output is not None else Path(scratch) / model
        try:
            result = train_from_training_set(training_set, model, config, target, overrides or None)
        except (FileNotFoundError, ValueError) as error:
            _fail(str(error))
    metrics = result["valid_metrics"]
    typer.echo(f"settings={json.dumps(settings, sort_keys=True)}")
    typer.echo(f"valid-auc={metrics['auc']:.6f}")
    typer.echo(f"valid-logloss={metrics['logloss']:.6f}")


@tune_app.command("best")
def best(
    experiment: Path = typer.Argument(..., help="The finished Experiment (kubectl get experiment NAME -o yaml)."),
) -> None:
    """Print the experiment's optimal trial as the pipeline's model_settings JSON."""
    from longrec.pipeline.katib import best_settings

    try:
        document = yaml.safe_load(experiment.read_text())
        typer.echo(json.dumps(best_settings(document)))
    except (OSError, ValueError, yaml.YAMLError) as error:
        _fail(str(error))
