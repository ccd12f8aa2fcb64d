"""``longrec nextitem``: train a next-item model (RecBLR or SASRec) over seeds, report HR/NDCG/MRR@10/20.

Mounted by the main CLI as ``app.add_typer(nextitem_app, name="nextitem")``; the default command runs
without a sub-command name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

__all__ = ["format_summary", "nextitem_app", "run_nextitem_experiment", "summary_table"]

nextitem_app = typer.Typer(help="Next-item ranking (leave-one-out, full ranking) of RecBLR or SASRec.")

METRIC_ORDER = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "mrr@20")


def summary_table(results: list[dict]) -> str:
    """A markdown table with one row of mean ± std test metrics per result (result.json contents)."""
    header = "| model | seeds | " + " | ".join(METRIC_ORDER) + " |"
    rule = "|" + "---|" * (len(METRIC_ORDER) + 2)
    rows = []
    for result in results:
        summary = result["test_summary"]
        cells = [f"{summary[m]['mean']:.4f} ± {summary[m]['std']:.4f}" for m in METRIC_ORDER]
        seeds = ",".join(str(run["seed"]) for run in result["runs"])
        rows.append(f"| {result['model']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def format_summary(result: dict) -> str:
    """A one-row markdown table of mean ± std test metrics."""
    return summary_table([result])


def run_nextitem_experiment(
    model: str,
    dataset: str,
    max_history_length: int,
    epochs: int,
    seeds: list[int],
    output: Path | None = None,
    min_core: int = 5,
    max_users: int | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    dropout: float | None = None,
    patience: int = 10,
    num_threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Load ``dataset``, build leave-one-out data, train over ``seeds``; write result.json/summary.md."""
    from longrec.data.datasets import load_dataset
    from longrec.data.nextitem import build_next_item_data
    from longrec.train.nextitem import NextItemTrainConfig, run_next_item

    data = build_next_item_data(
        load_dataset(dataset), max_history_length, min_core=min_core or None, max_users=max_users
    )
    config = NextItemTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        num_threads=num_threads,
        device=device,
    )
    overrides = {"dropout": dropout} if dropout is not None else None
    result = run_next_item(model, data, seeds, config, overrides)
    result["dataset"] = dataset
    result["min_core"] = min_core
    result["max_users"] = max_users
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "result.json").write_text(json.dumps(result, indent=2))
        (output / "summary.md").write_text(format_summary(result) + "\n")
    return result


@nextitem_app.callback(invoke_without_command=True)
def nextitem(
    model: str = typer.Option("recblr", help="recblr or sasrec."),
    dataset: str = typer.Option("ml-100k", help="ml-100k, dslabs-movielens or a user,item,timestamp file."),
    max_history_length: int = typer.Option(50, "--max-history-length", "-L", help="History length L."),
    epochs: int = typer.Option(30, help="Maximum epochs (early stopping on validation NDCG@10)."),
    seeds: str = typer.Option("0", help="Comma-separated seeds, e.g. 0,1,2."),
    output: Path | None = typer.Option(None, help="Folder for result.json and summary.md."),
    min_core: int = typer.Option(5, help="k-core filter on users and items (0 = off)."),
    max_users: int = typer.Option(0, help="Keep the first N users (0 = all)."),
    batch_size: int = typer.Option(128, help="Training windows per step."),
    lr: float = typer.Option(3e-3, help="Adam learning rate (3e-3: tuned for both models, RECBLR.md)."),
    dropout: float | None = typer.Option(None, help="Override the model's dropout."),
    patience: int = typer.Option(10, help="Early-stopping patience in epochs (10: see NextItemTrainConfig)."),
    threads: int = typer.Option(0, help="torch threads (0 = default)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Train MODEL over SEEDS and print test HR/NDCG/MRR@10/20 as mean ± std."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if model not in ("recblr", "sasrec"):
        typer.echo(f"error: unknown model {model!r}; choose recblr or sasrec", err=True)
        raise typer.Exit(2)
    if max_history_length <= 0 or epochs <= 0:
        typer.echo("error: --max-history-length and --epochs must be positive", err=True)
        raise typer.Exit(2)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        typer.echo(f"error: --seeds must be comma-separated integers, got {seeds!r}", err=True)
        raise typer.Exit(2) from None
    result = run_nextitem_experiment(
        model,
        dataset,
        max_history_length,
        epochs,
        seed_list,
        output,
        min_core=min_core,
        max_users=max_users or None,
        batch_size=batch_size,
        lr=lr,
        dropout=dropout,
        patience=patience,
        num_threads=threads or None,
        device=device,
    )
    typer.echo(format_summary(result))
