"""RecBLR against the official implementation (chengkai-liu/RecBLR under RecBole): each difference alone and
all together, next-item ranking (time-ordered leave-one-out, full ranking, 5-core), mean ± std over seeds.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/recblr_ablation.py --dataset ml-100k -L 50 \
        --seeds 0,1,2 --json benchmarks/results/recblr_ablation_ml-100k.json

Resumable: variants already in the JSON are kept (delete it to start over). Prints and writes (beside the
JSON, .md) one row per variant with the test metrics, the best epochs and the change against "ours".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

OFFICIAL_MODEL = {"decay_init": "official", "init": "official", "layer_norm_eps": 1e-12}
# name -> (model overrides, train-config overrides). Everything not named is `longrec nextitem`'s default.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "ours (defaults)": ({}, {}),
    "Λ init evenly spaced in Λ (official)": ({"decay_init": "official"}, {}),
    "RecBole init: Linear N(0, 0.02), zero bias (official)": ({"init": "official"}, {}),
    "LayerNorm eps 1e-12 (official)": ({"layer_norm_eps": 1e-12}, {}),
    "all three (the official model)": (OFFICIAL_MODEL, {}),
    "official model + its power-of-two zero prefix, unmasked (official)": (
        {**OFFICIAL_MODEL, "mask_padding": False, "pow2_left_pad": True},
        {},
    ),
    "official model, patience 10 (official)": (OFFICIAL_MODEL, {"patience": 10}),
    "official model, dropout 0.5": ({**OFFICIAL_MODEL, "dropout": 0.5}, {}),
    "padding row in the softmax (official)": ({"padding_in_softmax": True}, {}),
}
METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


def run_variant(data, model_overrides: dict, train_overrides: dict, args) -> dict:
    from longrec.train.nextitem import NextItemTrainConfig, run_next_item

    config = NextItemTrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        batch_size=args.batch_size,
        num_threads=args.threads,
    )
    config = dataclasses.replace(config, **train_overrides)
    started = time.perf_counter()
    result = run_next_item("recblr", data, args.seeds, config, model_overrides)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["train_overrides"] = train_overrides
    return result


def table(results: dict) -> str:
    base = results.get("ours (defaults)")
    header = ["variant", "epochs run (best)", *METRICS, "Δ HR@10 vs ours", "Δ NDCG@10 vs ours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        summary = result["test_summary"]
        runs = result["runs"]
        epochs = (
            "/".join(str(r["epochs_run"]) for r in runs)
            + " ("
            + "/".join(str(r["best_epoch"]) for r in runs)
            + ")"
        )
        cells = [f"{summary[m]['mean']:.4f} ± {summary[m]['std']:.4f}" for m in METRICS]
        deltas = []
        for metric in ("hr@10", "ndcg@10"):
            if base is None:
                deltas.append("")
                continue
            mean, reference = summary[metric]["mean"], base["test_summary"][metric]["mean"]
            spread = max(summary[metric]["std"], base["test_summary"][metric]["std"])
            deltas.append(
                f"{100 * (mean / reference - 1):+.1f} % ({(mean - reference) / spread:+.1f} sd)"
                if spread
                else ""
            )
        lines.append("| " + " | ".join([name, epochs, *cells, *deltas]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("-L", "--max-history-length", type=int, default=50)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="", help="comma-separated indices into VARIANTS (default all)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from longrec.data.datasets import load_dataset
    from longrec.data.nextitem import build_next_item_data

    data = build_next_item_data(load_dataset(args.dataset), args.max_history_length, min_core=5)
    payload = json.loads(args.json.read_text()) if args.json.is_file() else {}
    payload.update(
        command="OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/recblr_ablation.py "
        f"--dataset {args.dataset} -L {args.max_history_length} --seeds {','.join(map(str, args.seeds))} "
        f"--epochs {args.epochs} --patience {args.patience} --json {args.json}",
        dataset=args.dataset,
        max_history_length=args.max_history_length,
    )
    results = payload.setdefault("results", {})
    chosen = list(VARIANTS)
    if args.variants:
        chosen = [chosen[int(i)] for i in args.variants.split(",")]
    for name in chosen:
        if name in results:
            continue
        model_overrides, train_overrides = VARIANTS[name]
        result = run_variant(data, model_overrides, train_overrides, args)
        results[name] = {
            k: result[k]
            for k in ("model_overrides", "train_overrides", "train_config", "runs", "test_summary", "wall_s")
        }
        for run in results[name]["runs"]:
            run.pop("history", None)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        mean_epoch = statistics.mean(r["seconds_per_epoch"] for r in result["runs"])
        print(
            f"{name}: {result['test_summary']['hr@10']['mean']:.4f} HR@10, {mean_epoch:.1f} s/epoch",
            flush=True,
        )
    ordered = {name: results[name] for name in VARIANTS if name in results}
    text = table(ordered)
    args.json.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
