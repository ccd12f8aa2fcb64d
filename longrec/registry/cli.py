"""`longrec registry ...`: what operators need to see and move in the model registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

registry_app = typer.Typer(no_args_is_help=True, help="List, inspect and roll back registered models.")

RegistryOpt = typer.Option(
    Path(os.environ.get("LONGREC_HOME", ".longrec")) / "registry", "--registry-dir", help="Registry root."
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _registry(root: Path):
    from longrec.registry.store import ModelRegistry

    if not root.is_dir():
        _fail(f"no registry at {root} (run the pipeline first, or pass --registry-dir)")
    return ModelRegistry(root)


@registry_app.command("list")
def list_(
    dataset: str = typer.Option(None, "--dataset", help="Only this dataset track (e.g. ml-100k)."),
    registry_dir: Path = RegistryOpt,
) -> None:
    """Every registered model: tag, track, model, live stage, test AUC, creation time."""
    registry = _registry(registry_dir)
    rows = registry.list_models(dataset)
    if not rows:
        typer.echo("no registered models" + (f" for {dataset}" if dataset else ""))
        return
    typer.echo(f"{'tag':<44} {'track':<28} {'model':<7} {'stage':<10} {'test AUC':>8}  created")
    for row in rows:
        auc = f"{row['test_auc']:.4f}" if isinstance(row["test_auc"], (int, float)) else "-"
        typer.echo(
            f"{row['tag']:<44} {str(row['track']):<28} {str(row['model_name']):<7} {row['stage']:<10} "
            f"{auc:>8}  {row['created'][:19]}"
        )


@registry_app.command("show")
def show(tag: str, registry_dir: Path = RegistryOpt) -> None:
    """One model's metadata (metrics, sample identity, training config, runtime) and live stage."""
    from longrec.registry.store import RegistryError

    registry = _registry(registry_dir)
    try:
        stored = registry.stored(tag)
    except RegistryError as error:
        _fail(str(error))
    payload = {"tag": stored.tag, "stage": registry.stage(stored.tag), "path": str(stored.path)}
    payload.update({"labels": stored.labels, "created": stored.creation_time, "metadata": stored.metadata})
    typer.echo(json.dumps(payload, indent=2, default=str))


@registry_app.command("history")
def history(dataset: str, registry_dir: Path = RegistryOpt) -> None:
    """Every production move of a track: when, what, from what, who and why."""
    registry = _registry(registry_dir)
    entries = registry.history(dataset)
    if not entries:
        typer.echo(f"no production history for {dataset}")
        return
    for entry in entries:
        at = entry.get("promoted_at") or entry.get("at", "")
        typer.echo(
            f"{at}  {entry.get('event', 'promote'):<9} {entry.get('tag')}  (was {entry.get('previous')})  "
            f"by {entry.get('actor', '?')}: {entry.get('reason', '')}"
        )


@registry_app.command("rollback")
def rollback(
    dataset: str,
    to: str = typer.Option(None, "--to", help="Tag to roll back to (default: the model production replaced)."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the history)."),
    actor: str = typer.Option(None, "--actor", help="Who (default: user@host)."),
    registry_dir: Path = RegistryOpt,
) -> None:
    """Move a track's production pointer back; recorded in the history with who and why."""
    from longrec.registry.store import RegistryError

    registry = _registry(registry_dir)
    try:
        pointer = registry.rollback(dataset, to=to, reason=reason, actor=actor)
    except RegistryError as error:
        _fail(str(error))
    typer.echo(f"production for {dataset}: {pointer['tag']} (was {pointer['previous']})")


@registry_app.command("promote")
def promote(
    tag: str,
    track: str = typer.Option(..., "--track", help="Dataset track whose production pointer moves."),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the history)."),
    expected: str = typer.Option(
        None, "--expected", help="Move only if production is still this tag (compare-and-swap)."
    ),
    actor: str = typer.Option(None, "--actor", help="Who (default: user@host)."),
    registry_dir: Path = RegistryOpt,
) -> None:
    """Make a registered model production by hand (the gate's override), recorded in the history."""
    from longrec.registry.store import ANY, RegistryError

    registry = _registry(registry_dir)
    try:
        stored = registry.stored(tag)
        model_track = stored.metadata.get("track", stored.metadata.get("dataset"))
        if model_track != track:
            _fail(f"{tag} was trained on {model_track}, not {track}")
        pointer = registry.promote(
            tag, track, expected_current=expected if expected else ANY, reason=reason, actor=actor
        )
    except RegistryError as error:
        _fail(str(error))
    typer.echo(f"production for {track}: {pointer['tag']} (was {pointer['previous']})")
