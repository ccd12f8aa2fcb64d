"""IMN ablations (iterations, enhancement, Hadamard-only, late cross, weight normalisation) beside DIN.

``run_ablation`` trains each variant over seeds on one dataset (``seed_study``) and writes a Markdown and
CSV table and a bar chart of test AUC per variant. ``ablate_app`` exposes it as ``longrec ablate imn``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from longrec.data.samples import SampleConfig
from longrec.experiments.seed_study import build_splits, seed_study, summarise, summary_markdown
from longrec.train.trainer import TrainConfig

__all__ = ["DEFAULT_VARIANTS", "VARIANTS", "ablate_app", "plot_auc", "run_ablation"]

logger = logging.getLogger(__name__)

# label → (model name, config overrides). "nP" = n memory reads, "+" = memory enhancement on.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "DIN": ("din", {}),
    "IMN-1P": ("imn", {"iterations": 1, "memory_enhancement": False}),
    "IMN-2P": ("imn", {"iterations": 2, "memory_enhancement": False}),
    "IMN-3P": ("imn", {"iterations": 3, "memory_enhancement": False}),
    "IMN-4P": ("imn", {"iterations": 4, "memory_enhancement": False}),
    "IMN-1P+": ("imn", {"iterations": 1, "memory_enhancement": True}),
    "IMN-3P+": ("imn", {"memory_enhancement": True}),
    "IMN-3P+ hadamard-only": ("imn", {"memory_enhancement": True, "euclidean_terms": False}),
    "IMN-3P+ late-cross": ("imn", {"memory_enhancement": True, "late_cross": True}),
    "IMN-3P+ valid-length": ("imn", {"memory_enhancement": True, "weight_normalisation": "valid_length"}),
}
DEFAULT_VARIANTS = tuple(VARIANTS)


def plot_auc(summary: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Bar chart of mean test AUC per variant with ±std error bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(summary) + 2), 4.5))
    colours = ["tab:gray" if model == "din" else "tab:blue" for model in summary["model"]]
    axis.bar(range(len(summary)), summary["auc_mean"], yerr=summary["auc_std"], color=colours, capsize=4)
    axis.set_xticks(range(len(summary)), list(summary.index), rotation=30, ha="right")
    low = float((summary["auc_mean"] - summary["auc_std"]).min())
    high = float((summary["auc_mean"] + summary["auc_std"]).max())
    margin = max(0.005, 0.15 * (high - low))
    axis.set_ylim(low - margin, high + margin)
    axis.set_ylabel("test AUC")
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    for index, value in enumerate(summary["auc_mean"]):
        axis.text(index, value, f"{value:.4f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_ablation(
    dataset: str,
    variants: Sequence[str],
    sample_config: SampleConfig,
    train_config: TrainConfig,
    seeds: Sequence[int],
    output: str | Path,
    max_train_samples: int | None = None,
    max_events: int | None = None,
    stem: str = "imn_ablation",
) -> pd.DataFrame:
    """Train ``variants`` over ``seeds``; write ``{stem}.md``, ``{stem}.csv`` and ``{stem}.png``."""
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    splits = build_splits(dataset, sample_config, max_train_samples, max_events)
    models = {name: VARIANTS[name] for name in variants}
    runs = seed_study(dataset, models, sample_config, train_config, seeds, splits=splits)
    runs.to_csv(output / f"{stem}.csv", index=False)
    reduced = f", train samples capped at {max_train_samples}" if max_train_samples else ""
    title = (
        f"{dataset}, L={sample_config.max_history_length}, {train_config.epochs} epoch(s) max, "
        f"seeds {','.join(map(str, seeds))}{reduced}"
    )
    overrides = "\n".join(f"- {name}: `{VARIANTS[name][0]}` {VARIANTS[name][1]}" for name in variants)
    (output / f"{stem}.md").write_text(summary_markdown(runs, title) + "\nVariants:\n\n" + overrides + "\n")
    plot_auc(summarise(runs), output / f"{stem}.png", title)
    logger.info("wrote %s", output / f"{stem}.md")
    return runs


def _split_list(values: list[str]) -> list[str]:
    """Accept repeated options and comma-separated values alike."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


ablate_app = typer.Typer(help="Ablation studies.", no_args_is_help=True)


@ablate_app.callback()
def _ablate() -> None:
    """Ablation studies (a callback keeps `imn` a sub-command even while it is the only one)."""


@ablate_app.command("imn")
def ablate_imn(
    dataset: str = typer.Option("ml-100k", help="ml-100k | dslabs-movielens | events file"),
    max_history_length: int = typer.Option(50, "--max-history-length", "-L", min=1),
    epochs: int = typer.Option(3, min=1),
    seeds: list[str] = typer.Option(["0"], help="training seeds (repeat or comma-separate)"),
    variants: list[str] = typer.Option(
        list(DEFAULT_VARIANTS), help="variant labels (repeat or comma-separate)"
    ),
    output: Path = typer.Option(Path("benchmarks/results/imn_ablation"), help="folder for .md/.csv/.png"),
    max_train_samples: int | None = typer.Option(None, min=1, help="random subset of train samples"),
    max_events: int | None = typer.Option(None, min=1, help="keep the first users' events only"),
    batch_size: int = typer.Option(1024, min=1),
    learning_rate: float = typer.Option(1e-3, min=0.0),
    max_steps_per_epoch: int | None = typer.Option(None, min=1, help="cap steps per epoch (smoke runs)"),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads"),
) -> None:
    """Train IMN variants (and DIN) over seeds on one dataset; write a table and an AUC bar chart."""
    names = _split_list(variants)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        seed_values = [int(seed) for seed in _split_list(seeds)]
    except ValueError as error:
        raise typer.BadParameter(f"seeds must be integers: {seeds}") from error
    sample_config = SampleConfig(max_history_length=max_history_length)
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=learning_rate,
        max_steps_per_epoch=max_steps_per_epoch,
        num_threads=threads,
        progress=False,
    )
    runs = run_ablation(
        dataset, names, sample_config, train_config, seed_values, output, max_train_samples, max_events
    )
    typer.echo((Path(output) / "imn_ablation.md").read_text())
    typer.echo(f"{len(runs)} runs; wrote {output}/imn_ablation.md, .csv, .png")


if __name__ == "__main__":
    ablate_app()
