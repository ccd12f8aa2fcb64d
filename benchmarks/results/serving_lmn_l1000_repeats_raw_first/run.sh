#!/bin/bash
# LMN at L=1000 served three times in a row (code of 484791e: the shards' RawRouteFirst), /rank only: how far its p99 and overhead
# ratio move from one run to the next on this machine.
cd "$(dirname "$0")/../../.."
for i in 1 2 3; do
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serving.py --models lmn --lengths 1000 --batching off \
    --json benchmarks/results/serving_lmn_l1000_repeats_raw_first/run$i.json > benchmarks/results/serving_lmn_l1000_repeats_raw_first/run$i.txt 2>&1
done
