"""CTR models compared with the same tuning budget: each model searched on validation AUC
(``longrec.train.tuning``, the pipeline's tuning step) on one seed, then its pick and its fixed settings
trained on every seed, test metrics mean ± std.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tuned_comparison.py --dataset dslabs-movielens \
        -L 50 --models din,imn --budget 8 --seeds 0,1,2 \
        --json benchmarks/results/tuned_comparison_dslabs-movielens_L50.json

The samples are built once (negatives from seed 0); a seed changes initialisation and batch order only.
Resumable: a model already in the JSON is kept (delete it to start over); a model under way keeps each
finished tuning trial and seed run in ``<json>.progress.json``, and a restart with the same arguments
trains only what is missing. Writes a .md beside the JSON.

The seed runs can use a second core: ``--part fixed`` (any time) or ``--part tuned`` (once the study's
trials are saved) with the same arguments trains only those runs of the listed ``--seeds``, each into
``<json>.runs/<model>-<kind>-seed<N>.json``, while the study runs. A study started (or restarted) after
such a file exists takes that run from it instead of training it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

METRICS = ("auc", "gauc", "logloss")


def train_and_test(model_name, spec, splits, config, overrides) -> dict:
    from longrec.models.registry import build_model
    from longrec.seeding import derive_seed
    from longrec.train.trainer import evaluate_model, set_seed, train_model

    set_seed(derive_seed(config.seed, "model-init"))  # as the pipeline's train task
    model = build_model(model_name, spec, overrides or None)
    start = time.perf_counter()
    result = train_model(model, splits["train"], splits["valid"], config)
    test = evaluate_model(model, splits["test"], config.eval_batch_size)
    return {
        "seed": config.seed,
        **{f"test_{m}": float(test[m]) for m in METRICS},
        **{f"valid_{m}": float(result.best_valid_metrics[m]) for m in METRICS},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def summary(runs: list[dict]) -> dict:
    out = {}
    for metric in METRICS:
        values = [run[f"test_{metric}"] for run in runs]
        out[metric] = {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    return out


def cell(stats: dict, metric: str) -> str:
    return f"{stats[metric]['mean']:.4f} ± {stats[metric]['std']:.4f}"


def table(payload: dict) -> str:
    lines = [
        f"## {payload['dataset']}, L={payload['max_history_length']}: every model tuned with "
        f"{payload['budget']} trials on validation AUC (seed {payload['tune_seed']}), test over seeds "
        f"{payload['seeds']}",
        "",
        "| model | settings | test AUC | test GAUC | test LogLoss | epochs run | valid AUC (tuning seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, record in payload["models"].items():
        for kind in ("fixed", "tuned"):
            runs = record[kind]["runs"]
            stats = summary(runs)
            epochs = "/".join(str(run["epochs_run"]) for run in runs)
            settings = "fixed" if kind == "fixed" else "tuned: " + json.dumps(record["tuning"]["chosen_params"])
            lines.append(
                f"| {name} | {settings} | {cell(stats, 'auc')} | {cell(stats, 'gauc')} | "
                f"{cell(stats, 'logloss')} | {epochs} | {record[kind]['valid_auc_tuning_seed']:.4f} |"
            )
    lines += ["", "Trials (validation AUC, tuning seed):", ""]
    for name, record in payload["models"].items():
        trials = record["tuning"]["trials"]
        lines.append(f"- {name} ({record['tuning']['seconds']:.0f} s):")
        for trial in trials:
            mark = " ← chosen" if trial["trial"] == record["tuning"]["chosen_trial"] else ""
            lines.append(f"  - {trial['valid_auc']:.4f} {json.dumps(trial['params'])}{mark}")
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("-L", "--max-history-length", type=int, default=50)
    parser.add_argument("--models", default="din,imn,recblr,lmn")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3, help="fixed settings' epochs (the pipeline's)")
    parser.add_argument("--lr", type=float, default=3e-3, help="fixed settings' lr (the pipeline's)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-events", type=int, default=0, help="smoke runs only (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--part", choices=("all", "fixed", "tuned"), default="all",
        help="all: tune, then every seed run; fixed / tuned: only those seed runs, into <json>.runs/ "
        "(a second process beside a running study; tuned needs the study's trials saved)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from longrec.data.samples import SampleConfig
    from longrec.experiments.seed_study import build_splits
    from longrec.train.trainer import TrainConfig
    from longrec.train.tuning import TrialResult, apply_settings, tune_model

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    splits, spec = build_splits(
        args.dataset, SampleConfig(max_history_length=args.max_history_length, seed=0),
        max_events=args.max_events or None,
    )
    base = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.tune_seed, progress=False,
        num_threads=args.threads,
    )
    payload = json.loads(args.json.read_text()) if args.json.is_file() else {}
    payload.update(
        command="OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tuned_comparison.py "
        f"--dataset {args.dataset} -L {args.max_history_length} --models {args.models} --budget {args.budget} "
        f"--tune-seed {args.tune_seed} --seeds {args.seeds} --threads {args.threads} --json {args.json}",
        dataset=args.dataset,
        max_history_length=args.max_history_length,
        budget=args.budget,
        tune_seed=args.tune_seed,
        seeds=seeds,
        fixed_settings=dataclasses.asdict(base),
        n_samples={name: len(samples) for name, samples in splits.items()},
    )
    models = payload.setdefault("models", {})
    # Each finished trial and seed run of a model not yet done, so a stopped study resumes where it was.
    progress_path = args.json.with_suffix(".progress.json")
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {}

    def save_progress() -> None:
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        progress_path.write_text(json.dumps(progress, indent=2))

    side_runs = args.json.with_suffix(".runs")  # seed runs trained by a --part process

    def side_run_path(name: str, kind: str, seed: int) -> Path:
        return side_runs / f"{name}-{kind}-seed{seed}.json"

    for name in args.models.split(","):
        if name in models:
            continue
        done = progress.setdefault(name, {"trials": [], "fixed": [], "tuned": []})
        if args.part != "all":
            if args.part == "tuned" and len(done["trials"]) < args.budget:
                raise SystemExit(
                    f"{name}: {len(done['trials'])} of {args.budget} trials saved in {progress_path}; "
                    "--part tuned needs the study's tuning finished"
                )
            settings = {}
            if args.part == "tuned":
                settings = tune_model(
                    name, spec, splits["train"], splits["valid"], base, args.budget, progress=print,
                    finished_trials=[TrialResult(**trial) for trial in done["trials"]],
                    retrain_resumed_pick=False,
                )[3].chosen.params  # fmt: skip
            finished = {run["seed"] for run in done[args.part]}
            for seed in seeds:
                path = side_run_path(name, args.part, seed)
                if seed in finished or path.is_file():
                    continue
                config, overrides = apply_settings(name, settings, dataclasses.replace(base, seed=seed))
                run = train_and_test(name, spec, splits, config, overrides)
                side_runs.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(run, indent=2))
                print(f"{name} {args.part} seed {seed}: test AUC {run['test_auc']:.4f} -> {path}", flush=True)
            continue

        def keep_trial(trial, done=done) -> None:
            done["trials"].append(dataclasses.asdict(trial))
            save_progress()

        _, _, _, tuning = tune_model(
            name, spec, splits["train"], splits["valid"], base, args.budget, progress=print,
            finished_trials=[TrialResult(**trial) for trial in done["trials"]], on_trial=keep_trial,
            retrain_resumed_pick=False,  # only the record is used: each seed trains the pick below
        )  # fmt: skip
        record = {"tuning": tuning.to_dict()}
        for kind, settings in (("fixed", {}), ("tuned", tuning.chosen.params)):
            runs = done[kind]
            for seed in seeds[len(runs) :]:
                path = side_run_path(name, kind, seed)
                if path.is_file():  # trained by a --part process
                    runs.append(json.loads(path.read_text()))
                else:
                    config, overrides = apply_settings(name, settings, dataclasses.replace(base, seed=seed))
                    runs.append(train_and_test(name, spec, splits, config, overrides))
                save_progress()
                print(f"{name} {kind} seed {seed}: test AUC {runs[-1]['test_auc']:.4f}", flush=True)
            valid_at_tune_seed = tuning.trials[0].valid_auc if kind == "fixed" else tuning.chosen.valid_auc
            record[kind] = {"settings": settings, "runs": runs, "valid_auc_tuning_seed": valid_at_tune_seed}
        models[name] = record
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        del progress[name]  # done: its record is in the JSON now
        if progress:
            save_progress()
        else:
            progress_path.unlink(missing_ok=True)
    if args.part != "all":
        return
    text = table(payload)
    args.json.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
