"""LMN with two horizons (issue #16): does a memory written from the long history recover what attending
over that history gains, at the short model's serving cost?

Rows, all trained and tested on the same samples (negatives from seed 0; a seed changes initialisation
and batch order only):

- ``DIN@S`` / ``DIN@L``: DIN reading the last S or the last L events;
- ``IMN@L``: IMN (its default 3P) reading the last L events;
- ``LMN@S <slots>``: LMN with one horizon (the memory written from the S events it reads);
- ``LMN S+L <target> <slots>``: the backbone reads S, the memory loss writes events drawn from the last L
  (``SampleConfig.memory_history_length``), at each memory size and write target.

Test AUC / GAUC / LogLoss (mean ± std over seeds), the same AUC by history-length bucket (the number of
the user's events before the target: short ≤ S < medium < L ≤ long), training seconds per epoch, and the
bare forward of one request (1 user × 100 candidates: ``encode_user`` + ``score_candidates``, median of
30). Resumable: finished (row, seed) runs in the JSON are kept. Writes a .md and a plot (test AUC against
memory slots, by horizon and write target, DIN and IMN as reference lines) beside the JSON.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_two_horizons.py --dataset dslabs-movielens \
        --short 50 --long 500 --seeds 0,1,2 --threads 1 \
        --json benchmarks/results/lmn_two_horizons_dslabs-movielens_S50_L500.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

METRICS = ("auc", "gauc", "logloss")
BUCKETS = ("short", "medium", "long")


def variants(short: int, long: int, slots: list[int], targets: list[str]) -> dict[str, dict]:
    """Row label -> (model, horizon, config overrides)."""
    rows = {
        f"DIN@{short}": {"model": "din", "horizon": "short", "overrides": {}},
        f"DIN@{long}": {"model": "din", "horizon": "long", "overrides": {}},
        f"IMN@{long}": {"model": "imn", "horizon": "long", "overrides": {}},
    }
    for n in slots:
        rows[f"LMN@{short} {n // 1024}K"] = {"model": "lmn", "horizon": "short", "overrides": {"memory_slots": n}}
    for target in targets:
        for n in slots:
            rows[f"LMN {short}+{long} {target} {n // 1024}K"] = {
                "model": "lmn",
                "horizon": "two",
                "overrides": {"memory_slots": n, "memory_target": target},
            }
    return rows


def bucket_of(n_earlier, short: int, long: int):
    import numpy as np

    return np.where(n_earlier <= short, 0, np.where(n_earlier < long, 1, 2))


def request_latency_ms(model, samples, n_candidates: int = 100, repeats: int = 30) -> float:
    """Median bare forward of 1 user × n candidates (the serving split: user part once, then candidates)."""
    import torch

    batch = next(samples.batches(1))
    one = {k: v for k, v in batch.items() if not k.startswith("long_history")}
    candidates = {k: v.expand(n_candidates, *v.shape[1:]) if v.dim() else v for k, v in one.items()}
    candidates["target_item"] = torch.arange(1, n_candidates + 1)
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats + 3):
            start = time.perf_counter()
            user = model.encode_user(one)
            model.score_candidates(user, candidates)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[3:])


def run_one(row: dict, data: dict, seed: int, args) -> dict:
    import numpy as np
    import torch

    from longrec.eval.ctr import auc, ctr_metrics
    from longrec.eval.predict import predict
    from longrec.models.registry import build_model
    from longrec.seeding import derive_seed
    from longrec.train.trainer import TrainConfig, set_seed, train_model

    splits, spec = data[row["horizon"]]
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, progress=False,
        num_threads=args.threads,
    )
    set_seed(derive_seed(seed, "model-init"))  # as the pipeline's train task
    model = build_model(row["model"], spec, row["overrides"] or None)
    start = time.perf_counter()
    result = train_model(model, splits["train"], splits["valid"], config)
    seconds = time.perf_counter() - start
    test = splits["test"]
    logits = predict(model, test, 4096)
    labels, users = test["label"].numpy(), test["user_id"].numpy()
    metrics = ctr_metrics(users, labels, logits)
    buckets = bucket_of(data["n_earlier"], args.short, args.long)
    by_bucket = {}
    for code, name in enumerate(BUCKETS):
        keep = buckets == code
        if keep.any() and 0 < labels[keep].sum() < keep.sum():
            by_bucket[name] = float(auc(labels[keep], logits[keep]))
    return {
        "seed": seed,
        **{f"test_{m}": float(metrics[m]) for m in METRICS},
        "test_auc_by_bucket": by_bucket,
        "valid_auc": float(result.best_valid_metrics["auc"]),
        "epochs_run": len(result.history),
        "seconds_per_epoch": round(seconds / max(len(result.history), 1), 1),
        "request_ms": round(request_latency_ms(model, test), 2),
        "bucket_samples": {name: int((buckets == code).sum()) for code, name in enumerate(BUCKETS)},
        "torch_threads": torch.get_num_threads(),
        "np_check": int(np.isfinite(logits).all()),
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(payload: dict) -> str:
    s, long = payload["short"], payload["long"]
    lines = [
        f"## {payload['dataset']}: LMN two horizons, S={s}, L={long} (seeds {payload['seeds']}, "
        f"{payload['epochs']} epochs, lr {payload['lr']})",
        "",
        f"Test samples by history-length bucket (events before the target): "
        f"{', '.join(f'{k} {v}' for k, v in payload['bucket_samples'].items())} "
        f"(short ≤ {s} < medium < {long} ≤ long).",
        "",
        "| row | test AUC | GAUC | LogLoss | AUC short | AUC medium | AUC long | s/epoch | request ms (1×100) | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in payload["runs"].items():
        if not runs:
            continue
        cells = [mean_std([r[f"test_{m}"] for r in runs]) for m in METRICS]
        cells += [mean_std([r["test_auc_by_bucket"][b] for r in runs if b in r["test_auc_by_bucket"]]) for b in BUCKETS]
        cells.append(f"{statistics.mean(r['seconds_per_epoch'] for r in runs):.0f}")
        cells.append(f"{statistics.median(r['request_ms'] for r in runs):.1f}")
        cells.append(str(len(runs)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    """Test AUC (mean ± std over seeds) against memory slots: LMN by horizon and write target, with DIN@S,
    DIN@L and IMN@L as horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, long = payload["short"], payload["long"]
    series: dict[str, list[tuple[int, list[float]]]] = {}
    references = {}
    for label, runs in payload["runs"].items():
        if not runs:
            continue
        aucs = [r["test_auc"] for r in runs]
        if label.startswith("LMN"):
            slots = int(label.rsplit(" ", 1)[1].rstrip("K")) * 1024
            name = f"LMN, one horizon ({s})" if label.startswith(f"LMN@{s} ") else (
                f"LMN, {s} + memory from {long}, " + label.split()[2]
            )
            series.setdefault(name, []).append((slots, aucs))
        else:
            references[label] = aucs
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in series.items():
        points.sort()
        ax.errorbar(
            [p[0] for p in points],
            [statistics.mean(p[1]) for p in points],
            yerr=[statistics.stdev(p[1]) if len(p[1]) > 1 else 0.0 for p in points],
            marker="o",
            capsize=3,
            label=name,
        )
    for (label, aucs), style in zip(references.items(), ("--", ":", "-."), strict=False):
        ax.axhline(statistics.mean(aucs), linestyle=style, color="grey", label=f"{label} (no memory)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory slots")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{payload['dataset']}: LMN with one and two horizons ({len(payload['seeds'])} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="dslabs-movielens")
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=500)
    parser.add_argument("--slots", default="65536,1048576")
    parser.add_argument("--targets", default="projection,interest")
    parser.add_argument("--rows", default="", help="comma-separated row labels to run (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-events", type=int, default=0, help="smoke runs only (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="JSONs of other processes of the same study to merge in"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numpy as np
    import torch

    from longrec.data.datasets import load_dataset
    from longrec.data.samples import SampleConfig, build_training_set_with_log
    from longrec.data.training_set import tensors_by_split

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = variants(args.short, args.long, [int(n) for n in args.slots.split(",")], args.targets.split(","))
    wanted = [r for r in args.rows.split(",") if r] or list(rows)
    unknown = [r for r in wanted if r not in rows]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(rows)}")

    dataset = load_dataset(args.dataset, max_events=args.max_events or None)
    two, log = build_training_set_with_log(
        dataset, SampleConfig(max_history_length=args.short, memory_history_length=args.long, seed=0)
    )
    short_spec, long_spec = dataset.feature_spec(args.short), dataset.feature_spec(args.long)
    data = {
        "short": (tensors_by_split(two, short_spec), short_spec),
        "two": (tensors_by_split(two, short_spec, log), short_spec),
    }
    test_two = two[two["split"] == "test"]
    if any(rows[label]["horizon"] == "long" for label in wanted):  # [N, L] histories: GBs at L=1000
        long_frame, _ = build_training_set_with_log(dataset, SampleConfig(max_history_length=args.long, seed=0))
        data["long"] = (tensors_by_split(long_frame, long_spec), long_spec)
        # Same samples in the same order in every view: the buckets and metrics line up.
        test_long = long_frame[long_frame["split"] == "test"]
        assert np.array_equal(test_two["target_item"].to_numpy(), test_long["target_item"].to_numpy())
        del long_frame, test_long
    data["n_earlier"] = test_two["long_history_length"].to_numpy()
    buckets = bucket_of(data["n_earlier"], args.short, args.long)

    payload = json.loads(args.json.read_text()) if args.json.is_file() else {}
    payload.update(
        command=f"OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/lmn_two_horizons.py --dataset {args.dataset} "
        f"--short {args.short} --long {args.long} --slots {args.slots} --targets {args.targets} --seeds {args.seeds} "
        f"--epochs {args.epochs} --threads {args.threads}"
        + (f" --max-events {args.max_events}" if args.max_events else "")
        + (f" --rows '{args.rows}'" if args.rows else "")
        + f" --json {args.json}",
        dataset=args.dataset,
        short=args.short,
        long=args.long,
        seeds=seeds,
        epochs=args.epochs,
        lr=args.lr,
        bucket_samples={name: int((buckets == code).sum()) for code, name in enumerate(BUCKETS)},
    )
    runs = payload.setdefault("runs", {})
    for source in args.merge:  # runs measured by parallel processes (one per seed), each with its own JSON
        other = json.loads(source.read_text())
        for label, other_runs in other.get("runs", {}).items():
            done = runs.setdefault(label, [])
            done += [r for r in other_runs if all(r["seed"] != d["seed"] for d in done)]
    for seed in seeds:  # seed-major: every row gets a first seed before any gets a third
        for label in wanted:
            done = runs.setdefault(label, [])
            if any(r["seed"] == seed for r in done):
                continue
            started = time.perf_counter()
            record = run_one(rows[label], data, seed, args)
            done.append(record)
            print(
                f"{label} seed {seed}: test AUC {record['test_auc']:.4f} by bucket {record['test_auc_by_bucket']} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2))
            args.json.with_suffix(".md").write_text(table(payload))
            plot(payload, args.json.with_suffix(".png"))
    for label in runs:
        runs[label].sort(key=lambda r: r["seed"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    args.json.with_suffix(".md").write_text(table(payload))
    plot(payload, args.json.with_suffix(".png"))
    print(table(payload))


if __name__ == "__main__":
    main()
