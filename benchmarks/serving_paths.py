"""Two parts of a served request, each old way against new way, in process, alternating in rounds.

1. **The online-store read of one user** (the ranker's features stage): Feast's ``get_online_features``
   against ``OnlineFeatures.read_user_row`` (the online store's own ``online_read`` of the two views), on
   the Feast SQLite store that ``benchmarks/serving.py`` serves (users with L=1000 events). Timed back to
   back ("hot") and after 10 ms of other Python work before each read ("after other work"), which is
   closer to a served request: between two requests the process runs the model, HTTP and JSON, and a
   read then runs about 2x slower than in a tight loop.
2. **The scoring call** of DIN, IMN and RecBLR (random weights, 100 candidates, one torch thread, the
   fused attention kernel for DIN as served): ``score_candidates`` compiled alone (``encode_user`` eager,
   what the ranker compiled before) against both compiled as one graph (what it compiles now), at
   full L=1000 and at a 65-event history (ML-100k's median user), trimmed as served. Scores are
   checked equal (1e-5) before timing.

Each variant keeps the median of its per-round medians (``din_attention_cpu.timed``, one untimed call
per variant and round first); the ratios printed are old / new from this run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serving_paths.py \\
        --json benchmarks/results/serving_paths.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from din_attention_cpu import timed, write_results  # noqa: E402  (alternating rounds, median of medians)

LENGTH = 1000
USERS = 198


def spin(seconds: float) -> None:
    """Busy Python work (not a sleep): the state a served request's code meets."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def features_read(rounds: int) -> list[dict]:
    from longrec.features.definitions import SEQUENCE_FEATURES, SEQUENCE_VIEW, USER_FEATURES, USER_VIEW
    from longrec.serving.features import OnlineFeatures
    from serving import make_world

    with tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp:
        spec, repo, _ = make_world(Path(tmp), LENGTH, USERS)
        online = OnlineFeatures(repo, spec.n_items)
        names = [f"{SEQUENCE_VIEW}:{n}" for n in SEQUENCE_FEATURES] + [
            f"{USER_VIEW}:{n}" for n in USER_FEATURES
        ]

        users = itertools.cycle(range(1, USERS + 1))  # each call reads the next user

        def feast_call() -> None:
            online.store.get_online_features(features=names, entity_rows=[{"user_id": next(users)}]).to_dict()

        def direct() -> None:
            online.read_user_row(next(users))

        variants = {"get_online_features": (1, feast_call), "online_read": (1, direct)}
        rows = []
        for setting, before in (("hot", None), ("after other work", lambda: spin(0.01))):
            timings = timed(variants, rounds, 60 if before else 200, before, digits=3)
            ratio = timings["get_online_features"] / timings["online_read"]
            rows.append({"part": "features read", "setting": setting, **timings, "ratio": round(ratio, 2)})
            print(f"features read, {setting}: {timings} -> {ratio:.2f}x", flush=True)
    return rows


def scoring(rounds: int) -> list[dict]:
    from longrec.models.registry import build_model
    from longrec.serving.demo import demo_spec, write_model_dir
    from longrec.serving.features import trim_history_padding
    from longrec.serving.ranker import ModelScorer, _synthetic_batches

    torch.set_num_threads(1)
    spec = demo_spec(n_users=200, n_items=20_000, max_history_length=LENGTH)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp, torch.no_grad():
        for name in ("din", "imn", "recblr"):
            torch.manual_seed(0)
            write_model_dir(build_model(name, spec, {}), Path(tmp) / name)
            scorer = ModelScorer(Path(tmp) / name, name)
            scorer.enable_fused_attention()
            model = scorer.model
            score_only = torch.compile(model.score_candidates, dynamic=True)
            scorer.enable_compile()  # encode_user + score_candidates, one graph (what the ranker runs)
            for events in (LENGTH, 65):
                batches = _synthetic_batches(scorer, 100, events)
                batches = (trim_history_padding(batches[0]), batches[1])
                old = score_only(model.encode_user(batches[0]), batches[1])
                new = scorer.compiled_score(*batches)
                torch.testing.assert_close(new, old, rtol=0, atol=1e-5)

                def old_path(b=batches, m=model, compiled=score_only):
                    return compiled(m.encode_user(b[0]), b[1])

                def new_path(b=batches, compiled=scorer.compiled_score):
                    return compiled(*b)

                variants = {"score_candidates_compiled": (1, old_path), "whole_compiled": (1, new_path)}
                timings = timed(variants, rounds, 20, digits=3)
                ratio = timings["score_candidates_compiled"] / timings["whole_compiled"]
                rows.append({"part": "scoring", "model": name, "history_events": events, **timings,
                             "ratio": round(ratio, 2)})  # fmt: skip
                print(f"scoring {name}, {events} events: {timings} -> {ratio:.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rows = features_read(args.rounds) + scoring(args.rounds)
    if args.json:
        write_results(
            args.json, "serving_paths.py", argv, rows, weights="random (costs do not depend on them)"
        )
    return rows


if __name__ == "__main__":
    main()
