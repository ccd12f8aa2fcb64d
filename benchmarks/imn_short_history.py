"""Why IMN trails DIN at short histories on dslabs MovieLens (L = 50), and why 3P+ trails 3P: per run,
test AUC and LogLoss, LogLoss with the train → test label-prior shift undone, the sharpness of the scores,
per-epoch train loss / validation AUC / LogLoss, and the state of IMN's memory GRU (how large its input
Σ a_j e_j is against its state, how many update gates sit at 0 or 1).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/imn_short_history.py --dataset dslabs-movielens \
        -L 50 --seeds 0,1,2 --json benchmarks/results/imn_short_history_dslabs-movielens_L50.json

Train samples have 1 negative per positive (positive rate 0.5), valid/test 4 (rate 0.2): a model's
LogLoss on test then also measures how far its scores sit from the training prior, so a sharper model pays
more for the same ranking. "LogLoss, prior shift undone" adds log(π_test/(1−π_test)) − log(π_train/(1−π_train))
to every logit first (the standard correction for sampled negatives).
Resumable per (variant, seed). Writes a .md beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path

VARIANTS = {
    "DIN": ("din", {}),
    "IMN-1P": ("imn", {"iterations": 1, "memory_enhancement": False}),
    "IMN-3P": ("imn", {"iterations": 3, "memory_enhancement": False}),
    "IMN-3P+": ("imn", {"memory_enhancement": True}),
    "IMN-3P+ valid-length": ("imn", {"memory_enhancement": True, "weight_normalisation": "valid_length"}),
}


def gru_state(model, batch) -> dict:
    """Input/state norms of IMN's memory GRU and the share of saturated update gates, over all N reads."""
    import torch

    with torch.no_grad():
        history = model.embed_history(batch)
        target = model.item_embedding(batch["target_item"])
        valid = batch["history_mask"].to(history.dtype)
        memory = target
        cell = model.memory_cell
        ratios, saturated = [], []
        for _ in range(model.config.iterations):
            weights = model.attention(history, memory, target) * valid
            pooled = torch.bmm(weights.unsqueeze(1), history).squeeze(1)
            if model.config.weight_normalisation == "valid_length":
                pooled = pooled / valid.sum(1, keepdim=True).clamp_min(1)
            gates_x = pooled @ cell.weight_ih.T + cell.bias_ih
            gates_h = memory @ cell.weight_hh.T + cell.bias_hh
            d = memory.shape[1]
            update = torch.sigmoid(gates_x[:, d : 2 * d] + gates_h[:, d : 2 * d])
            saturated.append(float(((update < 0.01) | (update > 0.99)).float().mean()))
            ratios.append(float(pooled.norm(dim=1).mean() / memory.norm(dim=1).mean().clamp_min(1e-12)))
            memory = cell(pooled, memory)
    return {"input_to_state_norm": ratios, "saturated_update_gates": saturated}


def run(variant: str, seed: int, splits, spec, args) -> dict:
    import numpy as np

    from longrec.eval.ctr import ctr_metrics
    from longrec.eval.predict import predict
    from longrec.models.registry import build_model
    from longrec.seeding import derive_seed
    from longrec.train.trainer import TrainConfig, set_seed, train_model

    name, overrides = VARIANTS[variant]
    config = TrainConfig(
        epochs=args.epochs, batch_size=1024, lr=args.lr, seed=seed, progress=False, num_threads=args.threads
    )
    set_seed(derive_seed(seed, "model-init"))
    model = build_model(name, spec, overrides or None)
    result = train_model(model, splits["train"], splits["valid"], config)
    test = splits["test"]
    logits = predict(model, test).astype(np.float64)
    labels = test["label"].numpy()
    users = test["user_id"].numpy()
    train_rate = float(splits["train"]["label"].float().mean())
    test_rate = float(labels.mean())
    shift = math.log(test_rate / (1 - test_rate)) - math.log(train_rate / (1 - train_rate))
    metrics = ctr_metrics(users, labels, logits)
    shifted = ctr_metrics(users, labels, logits + shift)
    record = {
        "variant": variant,
        "seed": seed,
        "test_auc": metrics["auc"],
        "test_gauc": metrics["gauc"],
        "test_logloss": metrics["logloss"],
        "test_logloss_prior_shift_undone": shifted["logloss"],
        "test_mean_probability": float((1 / (1 + np.exp(-logits))).mean()),
        "test_positive_rate": test_rate,
        "train_positive_rate": train_rate,
        "test_logit_std": float(logits.std()),
        "best_epoch": result.best_epoch,
        "epochs": [
            {
                "epoch": r["epoch"],
                "train_loss": r["train_loss"],
                "valid_auc": r["valid"]["auc"],
                "valid_logloss": r["valid"]["logloss"],
            }
            for r in result.history
        ],
    }
    if name == "imn":
        model.eval()
        batch = next(iter(test.batches(2048, shuffle=False)))
        record["memory_gru"] = gru_state(model, batch)
    return record


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(payload: dict) -> str:
    lines = [
        f"## {payload['dataset']}, L={payload['max_history_length']}, ≤{payload['epochs']} epochs, "
        f"Adam {payload['lr']}, seeds {payload['seeds']}",
        "",
        "| variant | test AUC | test GAUC | test LogLoss | LogLoss, prior shift undone | mean p on test "
        "(positive rate 0.2) | logit std | train loss, last epoch | best epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_variant: dict[str, list[dict]] = {}
    for record in payload["runs"].values():
        by_variant.setdefault(record["variant"], []).append(record)
    for variant in VARIANTS:
        runs = by_variant.get(variant)
        if not runs:
            continue
        cells = [
            mean_std([r[k] for r in runs])
            for k in (
                "test_auc",
                "test_gauc",
                "test_logloss",
                "test_logloss_prior_shift_undone",
                "test_mean_probability",
                "test_logit_std",
            )
        ]
        last_loss = mean_std([r["epochs"][-1]["train_loss"] for r in runs])
        best = "/".join(str(r["best_epoch"]) for r in runs)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {last_loss} | {best} |")
    lines += ["", "IMN's memory GRU on 2,048 test samples (seed means, per read n = 1..N):", ""]
    lines += ["| variant | ‖Σ a_j e_j‖ / ‖m‖ | update gates at <0.01 or >0.99 |", "|---|---|---|"]
    for variant in VARIANTS:
        runs = [r for r in by_variant.get(variant, []) if "memory_gru" in r]
        if not runs:
            continue
        reads = len(runs[0]["memory_gru"]["input_to_state_norm"])
        ratio = ", ".join(
            f"{statistics.mean(r['memory_gru']['input_to_state_norm'][i] for r in runs):.1f}" for i in range(reads)
        )
        sat = ", ".join(
            f"{statistics.mean(r['memory_gru']['saturated_update_gates'][i] for r in runs):.1%}"
            for i in range(reads)
        )
        lines.append(f"| {variant} | {ratio} | {sat} |")
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="dslabs-movielens")
    parser.add_argument("-L", "--max-history-length", type=int, default=50)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-events", type=int, default=0, help="smoke runs only (0 = all)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from longrec.data.samples import SampleConfig
    from longrec.experiments.seed_study import build_splits

    seeds = [int(s) for s in args.seeds.split(",")]
    splits, spec = build_splits(
        args.dataset,
        SampleConfig(max_history_length=args.max_history_length, seed=0),
        max_events=args.max_events or None,
    )
    payload = json.loads(args.json.read_text()) if args.json.is_file() else {}
    payload.update(
        command="OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/imn_short_history.py "
        f"--dataset {args.dataset} -L {args.max_history_length} --seeds {args.seeds} --epochs {args.epochs} "
        f"--lr {args.lr} --threads {args.threads} --json {args.json}",
        dataset=args.dataset,
        max_history_length=args.max_history_length,
        epochs=args.epochs,
        lr=args.lr,
        seeds=seeds,
    )
    runs = payload.setdefault("runs", {})
    for variant in args.variants.split(","):
        for seed in seeds:
            key = f"{variant} seed {seed}"
            if key in runs:
                continue
            runs[key] = run(variant, seed, splits, spec, args)
            r = runs[key]
            print(
                f"{key}: AUC {r['test_auc']:.4f} LogLoss {r['test_logloss']:.4f} "
                f"(prior shift undone {r['test_logloss_prior_shift_undone']:.4f}), mean p "
                f"{r['test_mean_probability']:.3f}",
                flush=True,
            )
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2))
    text = table(payload)
    args.json.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
