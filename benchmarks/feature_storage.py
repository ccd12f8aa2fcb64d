"""Offline storage of the snapshot representation (user_behavior_sequence) per event, by history length.

Each (user, distinct timestamp) row repeats up to L earlier events, so storage grows with L; this measures
the parquet bytes actually written (zstd) next to a plain events file.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/feature_storage.py --dataset ml-100k --lengths 50 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

from longrec.data.datasets import load_dataset
from longrec.features.store import measure_offline_storage


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure each requested L and print one line per L plus a JSON summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    dataset = load_dataset(args.dataset)
    events = dataset.events
    results = []
    print(f"{args.dataset}: {len(events)} events, {events['user_id'].nunique()} users")
    header = ("L", "rows", "parquet MB", "B/event", "raw MB", "events B/event", "s")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (6, 8, 11, 9, 8, 15, 6), strict=True)))
    with tempfile.TemporaryDirectory() as workdir:
        for length in args.lengths:
            start = time.perf_counter()
            result = measure_offline_storage(events, length, workdir)
            result["build_seconds"] = round(time.perf_counter() - start, 2)
            result["dataset"] = args.dataset
            results.append(result)
            print(
                f"{length:>6} {result['n_snapshot_rows']:>8} {result['sequence_bytes'] / 1e6:>11.2f} "
                f"{result['bytes_per_event']:>9.1f} {result['raw_int64_bytes'] / 1e6:>8.1f} "
                f"{result['events_bytes_per_event']:>15.1f} {result['build_seconds']:>6.2f}"
            )
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
