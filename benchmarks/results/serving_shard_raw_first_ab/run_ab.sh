#!/bin/bash
# Served A/B: c95f9c4 (shards' raw route inside BentoML's middleware, torch.unique) vs 5d87d3d
# (RawRouteFirst, unique_ids), alternating. Each side's checkout on PYTHONPATH.
set -e
out=/work/main/benchmarks/results/serving_shard_raw_first_ab
for round in 1 2; do
  for side in before after; do
    if [ $side = before ]; then dir=/tmp/ab_before; else dir=/work/main; fi
    cd $dir
    echo "== $side round $round $(date -u +%H:%M:%S)"
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$dir /work/main/.venv/bin/python benchmarks/serving.py --models lmn --lengths 50 1000 --batching off --json $out/${side}_round${round}.json > $out/${side}_round${round}.txt 2>&1
  done
done
echo done $(date -u +%H:%M:%S)
