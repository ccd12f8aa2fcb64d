"""One table of every next-item run under ``results/nextitem/*/result.json`` (written by ``longrec nextitem``).

.venv/bin/python benchmarks/nextitem_summary.py        # → results/nextitem/summary.md
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from longrec.experiments.nextitem_cli import METRIC_ORDER

RESULTS = Path(__file__).parent / "results" / "nextitem"


def row(result: dict) -> str:
    """dataset, L, model, seeds, epochs run per seed (max), mean s/epoch, mean ± std of each test metric."""
    runs = result["runs"]
    epochs = "/".join(str(run["epochs_run"]) for run in runs) + f" ({result['train_config']['epochs']})"
    best = "/".join(str(run["best_epoch"]) for run in runs)
    seconds = statistics.mean(run["seconds_per_epoch"] for run in runs)
    summary = result["test_summary"]
    metrics = [f"{summary[m]['mean']:.4f} ± {summary[m]['std']:.4f}" for m in METRIC_ORDER]
    seeds = ",".join(str(run["seed"]) for run in runs)
    cells = [
        result["dataset"],
        str(result["data"]["max_history_length"]),
        result["model"],
        seeds,
        epochs,
        best,
    ]
    return "| " + " | ".join([*cells, f"{seconds:.1f}", *metrics]) + " |"


def main() -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*/result.json"))]
    header = ["dataset", "L", "model", "seeds", "epochs run (max)", "best epoch", "s/epoch", *METRIC_ORDER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *map(row, results)]
    lines += ["", "Test metrics: mean ± std (ddof 1) over the seeds; early stopping on validation NDCG@10."]
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
