"""RecBLR and SASRec tuned with the same budget: a grid over dropout × learning rate, every cell trained
on the tuning seed(s) and chosen by validation NDCG@10; the chosen cell is then trained on the remaining
seeds too, and only its test metrics are reported (test never takes part in the choice).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/nextitem_tuning.py --dataset ml-100k -L 50 \
        --json benchmarks/results/nextitem_tuning_ml-100k.json

Resumable: cells (and the chosen cells' extra seeds) already in the JSON are kept. Writes the JSON and,
beside it, .md: every cell's validation NDCG@10 / HR@10, then the chosen cell per model with its test
metrics and whether RecBLR's lead is outside the seeds' spread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


def cell_name(model: str, dropout: float, lr: float) -> str:
    return f"{model} dropout={dropout:g} lr={lr:g}"


def choose(results: dict, model: str, tune_seeds: list[int]) -> str:
    """The cell of `model` with the best mean validation NDCG@10 over the tuning seeds."""
    cells = {name: r for name, r in results.items() if r["model"] == model}
    return max(cells, key=lambda name: _valid_mean(cells[name], "ndcg@10", tune_seeds))


def _valid_mean(result: dict, metric: str, tune_seeds: list[int]) -> float:
    values = [run["valid"][metric] for run in result["runs"] if run["seed"] in tune_seeds]
    return sum(values) / len(values)


def report(payload: dict) -> str:
    results = payload["results"]
    tune_seeds = payload["tune_seeds"]
    lines = [
        f"Grid: dropout {payload['dropouts']} × lr {payload['lrs']}, each cell on seed(s) {payload['tune_seeds']}, "
        f"≤ {payload['epochs']} epochs, patience {payload['patience']}; chosen by mean validation NDCG@10, then "
        f"trained on seeds {payload['seeds']} for the test figures.",
        "",
        "| cell | epochs run (best) | valid HR@10 | valid NDCG@10 |",
        "|---|---|---|---|",
    ]
    for name, result in results.items():
        runs = [run for run in result["runs"] if run["seed"] in tune_seeds]
        epochs = (
            "/".join(str(r["epochs_run"]) for r in runs)
            + " ("
            + "/".join(str(r["best_epoch"]) for r in runs)
            + ")"
        )
        lines.append(
            f"| {name} | {epochs} | {_valid_mean(result, 'hr@10', tune_seeds):.4f} "
            f"| {_valid_mean(result, 'ndcg@10', tune_seeds):.4f} |"
        )
    lines += [
        "",
        "| model | chosen cell | " + " | ".join(f"test {m}" for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    chosen = {}
    for model, reported in sorted(payload.get("reported", {}).items()):
        name = reported["cell"]
        chosen[model] = reported["test_summary"]
        cells = [f"{chosen[model][m]['mean']:.4f} ± {chosen[model][m]['std']:.4f}" for m in METRICS]
        lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    if {"recblr", "sasrec"} <= set(chosen):
        lines.append("")
        for metric in ("hr@10", "ndcg@10"):
            a, b = chosen["recblr"][metric], chosen["sasrec"][metric]
            gap = a["mean"] - b["mean"]
            spread = a["std"] + b["std"]
            verdict = "outside" if abs(gap) > spread else "inside"
            lines.append(
                f"- {metric}: RecBLR − SASRec = {gap:+.4f} ({100 * gap / b['mean']:+.1f} %), {verdict} the seeds' "
                f"spread (sum of the two std {spread:.4f})"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("-L", "--max-history-length", type=int, default=50)
    parser.add_argument("--models", default="recblr,sasrec")
    parser.add_argument("--dropouts", default="0.2,0.5")
    parser.add_argument("--lrs", default="0.001,0.003")
    parser.add_argument("--tune-seeds", default="0", help="seeds every grid cell is trained on")
    parser.add_argument("--seeds", default="0,1,2", help="seeds the chosen cell's test metrics are over")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=128, help="windows per step (each holds up to L targets)"
    )
    parser.add_argument(
        "--recblr-overrides", default="{}", help="JSON of RecBLR config fields every cell uses"
    )
    parser.add_argument(
        "--sasrec-overrides", default="{}", help="JSON of SASRec config fields every cell uses"
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from longrec.data.datasets import load_dataset
    from longrec.data.nextitem import build_next_item_data
    from longrec.train.nextitem import NextItemTrainConfig, run_next_item, summarise_seeds

    seeds = [int(s) for s in args.seeds.split(",")]
    tune_seeds = [int(s) for s in args.tune_seeds.split(",")]
    dropouts = [float(d) for d in args.dropouts.split(",")]
    lrs = [float(lr) for lr in args.lrs.split(",")]
    recblr_overrides = json.loads(args.recblr_overrides)
    sasrec_overrides = json.loads(args.sasrec_overrides)
    fixed = {"recblr": recblr_overrides, "sasrec": sasrec_overrides}
    data = build_next_item_data(load_dataset(args.dataset), args.max_history_length, min_core=5)
    payload = json.loads(args.json.read_text()) if args.json.is_file() else {}
    payload.update(
        command="OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/nextitem_tuning.py "
        f"--dataset {args.dataset} -L {args.max_history_length} --models {args.models} "
        f"--dropouts {args.dropouts} --lrs {args.lrs} "
        f"--tune-seeds {args.tune_seeds} --seeds {args.seeds} --epochs {args.epochs} --patience {args.patience} "
        f"--batch-size {args.batch_size} --threads {args.threads} "
        f"--recblr-overrides '{args.recblr_overrides}' --sasrec-overrides '{args.sasrec_overrides}' --json {args.json}",
        dataset=args.dataset, max_history_length=args.max_history_length, seeds=seeds, tune_seeds=tune_seeds,
        dropouts=dropouts, lrs=lrs, epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
        recblr_overrides=recblr_overrides, sasrec_overrides=sasrec_overrides,
    )  # fmt: skip
    results = payload.setdefault("results", {})

    def train(model: str, dropout: float, lr: float, run_seeds: list[int]) -> dict:
        overrides = {"dropout": dropout, **fixed[model]}
        config = NextItemTrainConfig(
            epochs=args.epochs, patience=args.patience, lr=lr, num_threads=args.threads,
            batch_size=args.batch_size,
        )  # fmt: skip
        result = run_next_item(model, data, run_seeds, config, overrides)
        for run in result["runs"]:
            run.pop("history", None)
        return {k: result[k] for k in ("model", "model_overrides", "train_config", "runs", "test_summary")}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))

    models = args.models.split(",")

    def add_runs(name: str, model: str, dropout: float, lr: float, run_seeds: list[int]) -> None:
        """Train the cell on the seeds it lacks (a wider --tune-seeds reuses what is there)."""
        have = {run["seed"] for run in results[name]["runs"]} if name in results else set()
        missing = [seed for seed in run_seeds if seed not in have]
        if not missing:
            return
        fresh = train(model, dropout, lr, missing)
        if name in results:
            fresh["runs"] = sorted(results[name]["runs"] + fresh["runs"], key=lambda run: run["seed"])
        results[name] = fresh
        save()

    reported = payload.setdefault("reported", {})
    for model in models:  # runs of an earlier report are runs of their cell
        for run in reported.get(model, {}).get("runs", []):
            cell = results[reported[model]["cell"]]
            if run["seed"] not in {r["seed"] for r in cell["runs"]}:
                cell["runs"] = sorted(cell["runs"] + [run], key=lambda r: r["seed"])
    for model, dropout, lr in itertools.product(models, dropouts, lrs):
        name = cell_name(model, dropout, lr)
        add_runs(name, model, dropout, lr, tune_seeds)
        print(f"{name}: valid NDCG@10 {_valid_mean(results[name], 'ndcg@10', tune_seeds):.4f}", flush=True)
    for model in models:
        name = choose(results, model, tune_seeds)
        cell = results[name]
        add_runs(name, model, cell["model_overrides"]["dropout"], cell["train_config"]["lr"], seeds)
        runs = [run for run in results[name]["runs"] if run["seed"] in seeds]
        reported[model] = {
            "cell": name,
            "runs": runs,
            "test_summary": summarise_seeds([r["test"] for r in runs]),
        }
        save()
        print(f"{model}: chose {name}", flush=True)
    text = report(payload)
    args.json.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
