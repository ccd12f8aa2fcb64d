"""Serving latency and throughput of the ranker over HTTP on loopback, beside the bare in-process forward.

For each model (DIN, IMN, RecBLR, LMN with 1,048,576 slots in 2 shard services) and each history length
L, a synthetic world is served by `bentoml serve` (one worker per service; the ranker's torch and attention
kernel threads as the serving default, measured at start-up, or --threads for both; shards one): histories in
a Feast SQLite online store, random weights (serving cost does not depend on the weights; parity to the
offline forward is tested in tests/test_serving*.py). A bounded async httpx loop sends /rank requests with
100 candidates: at concurrency 1 for p50/p99 latency, then at concurrency 4 for throughput. Beside it, the
same request in process: the eager ``forward`` of 100 rows (what offline evaluation runs) and the split
``encode_user`` + ``score_candidates`` the service runs (LMN reading in-memory shards; DIN's, LMN's and
IMN's attention through the fused CPU kernel, as served, unless ``--fused-attention off``). The overhead ratio
is served p50 / split p50: HTTP, Feast read, JSON and (LMN) the shard calls. Around the one-client /rank
phase it also reads the services' /metrics twice and reports ("breakdown_ms", and a second table) the mean
milliseconds per request of each part they measure: the ranker's HTTP request, ``rank()``, its stages
(features, score, respond), one shard call as the ranker sees it and one gather inside a shard service.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serving.py --json benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = ("din", "imn", "recblr", "lmn")
LMN_PAPER_SCALE = {"memory_slots": 1_048_576}
N_ITEMS = 20_000
N_USERS = 200
N_CANDIDATES = 100
STAGES = ("features", "score", "respond")  # the ranker's longrec_rank_stage_seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def make_world(root: Path, length: int, users_with_history: int, lengths_from: str | None = None) -> tuple:
    """(spec, Feast repo, {user: history length}). Every user has a full history of L events, or with
    ``lengths_from`` each of N_USERS - 2 users has a real user's history length from that dataset (all
    their events, at most L, drawn with a fixed seed): real traffic, where the ranker trims the padding."""
    from longrec.features.store import create_feature_repo, materialize
    from longrec.serving.demo import demo_frames, demo_spec

    spec = demo_spec(n_users=N_USERS, n_items=N_ITEMS, max_history_length=length)
    if lengths_from:
        users_with_history = N_USERS - 2
    events, items, users = demo_frames(spec, events_per_user=length, users_with_history=users_with_history)
    lengths = {user: length for user in range(1, users_with_history + 1)}
    if lengths_from:
        from longrec.data.datasets import load_dataset

        counts = load_dataset(lengths_from).events.groupby("user_id").size().to_numpy()
        drawn = np.minimum(np.random.default_rng(0).choice(counts, users_with_history), length)
        lengths = {user: int(n) for user, n in zip(range(1, users_with_history + 1), drawn, strict=True)}
        newest_first = events.groupby("user_id").cumcount(ascending=False)
        events = events[newest_first < events["user_id"].map(lengths)].reset_index(drop=True)
    name = f"repo-L{length}" + (f"-{lengths_from}" if lengths_from else "")
    store = create_feature_repo(root / name, events, items, users, length)
    materialize(store)
    return spec, root / name, lengths


def served_threads_of(url: str) -> dict[str, float | None]:
    """The served ranker's thread counts, from its ``longrec_ranker_torch_threads`` (intra-op) and
    ``longrec_ranker_attention_threads`` (fused attention kernel) gauges, and how its start-up choice of
    them went (measurements taken, other processes' CPUs during the deciding one)."""
    import httpx

    counts: dict[str, float | None] = {"torch": None, "attention": None}
    gauges = {"choice_attempts": "longrec_ranker_thread_choice_attempts",
              "choice_other_cpus": "longrec_ranker_thread_choice_other_cpus"}  # fmt: skip
    counts.update(dict.fromkeys(gauges))
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for key in ("torch", "attention"):
            if line.startswith(f"longrec_ranker_{key}_threads"):
                counts[key] = int(float(line.split()[-1]))
        for key, name in gauges.items():
            if line.startswith(name + " "):
                counts[key] = float(line.split()[-1])
    return counts


def metric_totals(url: str) -> dict[str, float]:
    """Every histogram's ``_sum`` and ``_count`` in the server's /metrics (ranker and shards together),
    keyed by the line's name and labels."""
    import httpx

    totals = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.rpartition(" ")
        gc_bucket = name.startswith("longrec_gc_pause_seconds_bucket") and 'le="0.001"' in name
        if not line.startswith("#") and ("_sum{" in name or "_count{" in name or gc_bucket):
            totals[name] = float(value)
    return totals


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per request of each part the services measure, over the requests between the two
    /metrics snapshots: the ranker's HTTP request (BentoML's own histogram), ``rank()``, its stages, one
    shard call as the ranker sees it, one gather inside a shard service, and the ranker's garbage-collector
    pauses (their total per request, and how many passes took over 1 ms)."""

    def mean(*parts: str) -> float | None:
        keys = [k for k in after if all(p in k for p in parts)]
        sums = sum(after[k] - before.get(k, 0.0) for k in keys if "_sum{" in k)
        counts = sum(after[k] - before.get(k, 0.0) for k in keys if "_count{" in k)
        return round(1000 * sums / counts, 2) if counts else None

    parts = {
        "http": mean("bentoml_service_request_duration_seconds", 'endpoint="/rank"', 'runner_name="Ranker"'),
        "rank": mean("longrec_rank_latency_seconds"),
        **{stage: mean("longrec_rank_stage_seconds", f'stage="{stage}"') for stage in STAGES},
        "shard_call": mean("longrec_memory_shard_latency_seconds"),
        # One gather as a shard measures it: since RawRouteFirst, the raw route's own metric (its app's
        # time, BentoML's middleware no longer runs for it); before, BentoML's duration of the raw route,
        # and before that of the gather API.
        "inside_shard": mean("longrec_memory_shard_gather_seconds")
        or mean("bentoml_service_request_duration_seconds", 'endpoint="/raw/gather"')
        or mean("bentoml_service_request_duration_seconds", 'endpoint="/gather"'),
    }

    # The ranker's garbage-collector pauses: total ms per request, and how many passes took over 1 ms.
    def delta(prefix: str) -> float:
        return sum(after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix))

    requests = delta("longrec_rank_latency_seconds_count")
    if requests:
        parts["gc"] = round(1000 * delta("longrec_gc_pause_seconds_sum") / requests, 3)
        passes = delta("longrec_gc_pause_seconds_count") - delta("longrec_gc_pause_seconds_bucket")
        parts["gc_passes_over_1ms"] = passes
    return {key: value for key, value in parts.items() if value is not None}


def bare_timings(scorer, compiled, spec, user_id: int, repo: Path, repeats: int) -> dict:
    """Eager forward of 100 rows, the eager split path and the compiled split path (what the service
    runs by default), same features, the ranker's threads."""
    from longrec.serving.features import OnlineFeatures, build_batches, trim_history_padding

    features = OnlineFeatures(repo, spec.n_items)
    rng = np.random.default_rng(0)
    candidates = rng.choice(np.arange(1, spec.n_items), N_CANDIDATES, replace=False)
    user = features.user(user_id)
    user_batch, candidate_batch = build_batches(spec, user_id, user, candidates, features.genres(candidates))
    full = {key: value.expand(N_CANDIDATES, *value.shape[1:]) for key, value in user_batch.items()}
    full.update(candidate_batch)
    user_batch = trim_history_padding(user_batch)  # the split paths score what the service scores
    model = scorer.model
    times = {"forward": [], "split": [], "compiled_split": []}
    cpu_times = []
    with torch.no_grad():
        for _ in range(3):
            (
                model(full),
                scorer.score(user_batch, candidate_batch),
                compiled.score(user_batch, candidate_batch),
            )
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(full)
            t1 = time.perf_counter()
            scorer.score(user_batch, candidate_batch)
            t2 = time.perf_counter()
            cpu = time.process_time()
            compiled.score(user_batch, candidate_batch)
            t3 = time.perf_counter()
            cpu_times.append(time.process_time() - cpu)  # every thread of this process, shard reads too
            times["forward"].append(t1 - t0)
            times["split"].append(t2 - t1)
            times["compiled_split"].append(t3 - t2)
    return {
        **{f"{k}_p50_ms": 1000 * statistics.median(v) for k, v in times.items()},
        "compiled_split_cpu_ms": 1000 * statistics.median(cpu_times),
    }


FLAGS = ("degraded_memory", "feature_fallback")


class Tally:
    """One load phase's latencies and answers (None: an error) and its summary."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.flags = 0
        self.flag_kinds: dict[str, int] = {}  # which flag, so a flagged response can be traced

    def record(self, seconds: float, answer: dict | None) -> None:
        self.latencies.append(seconds)
        if answer is None:
            self.errors += 1
        elif any(answer[flag] for flag in FLAGS):
            self.flags += 1
            for flag in FLAGS:
                self.flag_kinds[flag] = self.flag_kinds.get(flag, 0) + int(answer[flag])

    def summary(self, wall: float) -> dict:
        return {
            "requests": len(self.latencies),
            "errors": self.errors,
            "flagged": self.flags,
            "flag_kinds": self.flag_kinds,
            "mean_ms": 1000 * float(np.mean(self.latencies)),
            "p50_ms": 1000 * percentile(self.latencies, 50),
            "p99_ms": 1000 * percentile(self.latencies, 99),
            "throughput_rps": len(self.latencies) / wall,
        }


async def load(
    url: str,
    bodies: list[dict],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    batched: bool = False,
) -> dict:
    """``batched``: each request goes to /rank_batch as a list of one (BentoML's adaptive batching joins
    concurrent calls); otherwise to /rank."""
    import httpx

    tally = Tally()
    deadline = time.perf_counter() + max_seconds
    counter = iter(range(max_requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in counter:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            body = bodies[index % len(bodies)]
            if batched:
                response = await client.post("/rank_batch", json={"requests": [body]})
            else:
                response = await client.post("/rank", json=body)
            seconds = time.perf_counter() - t0
            answer = response.json() if response.status_code == 200 else None
            if batched and answer is not None:
                answer = answer[0] if len(answer) == 1 and "error" not in answer[0] else None
            tally.record(seconds, answer)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - started)


def keepalive_load(url: str, bodies: list[dict], max_requests: int, max_seconds: float) -> dict:
    """One client on one kept-alive connection (``http.client``), bodies encoded before the clock starts,
    each answer decoded after its latency is taken: the service's latency with as little client as
    Python allows. The async httpx loop above adds its own 2-3 ms per request on this machine (the
    breakdown's "client" minus "http"), which is the load generator's cost, not the service's."""
    import http.client
    from urllib.parse import urlsplit

    encoded = [json.dumps(body).encode() for body in bodies]
    headers = {"Content-Type": "application/json"}
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    tally = Tally()
    started = time.perf_counter()
    try:
        for index in range(max_requests):
            if time.perf_counter() - started > max_seconds:
                break
            t0 = time.perf_counter()
            connection.request("POST", "/rank", body=encoded[index % len(encoded)], headers=headers)
            response = connection.getresponse()
            payload = response.read()
            seconds = time.perf_counter() - t0
            tally.record(seconds, json.loads(payload) if response.status == 200 else None)
    finally:
        connection.close()
    return tally.summary(time.perf_counter() - started)


def service_cpu_seconds(server) -> dict[str, float]:
    """CPU seconds used so far by each service's worker process (Ranker, MemoryShard0, ...)."""
    from longrec.serving.process import process_cpu_seconds

    return {
        service: sum(map(process_cpu_seconds, pids)) for service, pids in server.service_workers().items()
    }


def run_one(name: str, length: int, spec, repo: Path, registry: Path, args, lengths: dict[int, int]) -> dict:
    from longrec.kernels.din_attention import kernel_threads
    from longrec.models.registry import build_model
    from longrec.serving.demo import store_model_dir, write_model_dir
    from longrec.serving.memory import ShardValues
    from longrec.serving.package import prepare_serving
    from longrec.serving.process import ServeProcess
    from longrec.serving.ranker import ModelScorer, Ranker
    from longrec.serving.service_support import quiet_threads, set_ranker_threads

    torch.manual_seed(0)
    overrides = LMN_PAPER_SCALE if name == "lmn" else {}
    model_dir = registry.parent / "trained" / f"{name}-L{length}"
    model = build_model(name, spec, overrides)
    if name == "lmn" and args.lmn_query_bias == "zero":
        # A fresh LMN's query biases outweigh its item term: every item picks nearly the same rows and a
        # request reads ~250 distinct slots. Zeroed, a request reads thousands, as a trained model's do.
        with torch.no_grad():
            model.query.item_projection.bias.zero_()
            model.query.user_projection.bias.zero_()
    write_model_dir(model, model_dir)
    tag = store_model_dir(registry, model_dir, f"longrec-bench-{name}-l{length}")
    config = prepare_serving(registry, tag, 2, repo)
    config.shard_timeout_s = 5.0  # measure, do not degrade
    config.compile = args.compile == "on"
    config.torch_threads = args.threads
    config.fused_attention = args.fused_attention == "on"
    scorer = ModelScorer(model_dir, tag, config.model_files)
    compiled = ModelScorer(model_dir, tag, config.model_files)
    fused = config.fused_attention and all(
        [scorer.enable_fused_attention(), compiled.enable_fused_attention()]
    )
    if scorer.needs_memory:
        from longrec.registry.store import ModelRegistry
        from longrec.serving.memory import RemoteShardedMemory, load_memory_index

        shard_dirs = [ModelRegistry(registry).model_path(t) for t in config.shard_tags]
        clients = [ShardValues(d, i).gather for i, d in enumerate(shard_dirs)]
        for each in (scorer, compiled):
            each.attach_memory(RemoteShardedMemory(load_memory_index(shard_dirs[0]), clients, timeout_s=30))
    quiet_threads(args.threads)
    compiled.enable_compile()
    ranker = Ranker({"main": compiled}, None)
    ranker.warm_up()
    threads = set_ranker_threads(ranker, config, with_metrics=False)  # in process as the service sets them
    # Real lengths: the bare figures are those of the user with the median history (the served p50's).
    median = float(np.median(list(lengths.values())))
    bare_user = min(lengths, key=lambda user: (abs(lengths[user] - median), user))
    before = bare_timings(scorer, compiled, spec, bare_user, repo, args.bare_repeats)
    rng = np.random.default_rng(1)
    users = list(lengths) if args.history_lengths_from else [1 + i % args.users for i in range(64)]
    bodies = [
        {
            "user_id": int(user),
            "candidate_items": rng.choice(np.arange(1, spec.n_items), N_CANDIDATES, replace=False).tolist(),
        }
        for user in users
    ]
    started = time.perf_counter()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.batching]
    phases = {}
    parts: dict[str, float] = {}
    with ServeProcess(registry, free_port(), config=config) as server:
        ready_s = time.perf_counter() - started
        served_threads = served_threads_of(server.url)
        for batched in modes:
            asyncio.run(load(server.url, bodies, 1, args.warmup, 60, batched))
            prefix = "batched_" if batched else "served_"
            totals = metric_totals(server.url)
            one_client = asyncio.run(load(server.url, bodies, 1, args.requests, args.seconds, batched))
            if not batched:  # where the one-client requests' time went, as the services measured it
                parts = breakdown(totals, metric_totals(server.url))
                cpu_before = service_cpu_seconds(server)
                keepalive = keepalive_load(server.url, bodies, args.requests, args.seconds)
                cpu_after = service_cpu_seconds(server)
                # CPU each service process used per keep-alive request (ms; the ranker's includes torch's
                # and the kernel's threads, a shard's its HTTP server and lookups).
                cpu_ms = {
                    service: round(1000 * (cpu_after[service] - cpu_before.get(service, 0.0))
                                   / max(keepalive["requests"], 1), 2)
                    for service in cpu_after
                }  # fmt: skip
            phases[prefix] = (
                one_client,
                asyncio.run(load(server.url, bodies, args.concurrency, args.requests, args.seconds, batched)),
            )
    # The machine is shared: the bare figures are taken before and after serving, the lower one kept.
    after = bare_timings(scorer, compiled, spec, bare_user, repo, args.bare_repeats)
    bare = {key: min(before[key], after[key]) for key in before}
    row = {
        "model": name,
        "L": length,
        "history_lengths_from": args.history_lengths_from,  # None: every history is L events
        "median_history_length": median,
        "candidates": N_CANDIDATES,
        "memory_slots": overrides.get("memory_slots"),
        "lmn_query_bias": args.lmn_query_bias if name == "lmn" else None,
        "shards": len(config.shard_tags),
        "compile": config.compile,
        "fused_attention": fused,  # the attention (DIN, LMN, IMN) through longrec.kernels.din_attention
        "torch_threads": threads,  # in process
        "attention_threads": kernel_threads() if fused else None,  # in process, the fused kernel's
        "served_torch_threads": served_threads["torch"],  # the server's own choice (its /metrics)
        "served_attention_threads": served_threads["attention"] if fused else None,
        # The served thread choice's measurements (0 other CPUs: it was undisturbed; /metrics gauges).
        "served_thread_choice_attempts": served_threads["choice_attempts"],
        "served_thread_choice_other_cpus": served_threads["choice_other_cpus"],
        "concurrency": args.concurrency,
        "ready_s": round(ready_s, 1),
        **{k: round(v, 2) for k, v in bare.items()},
        "errors": 0,
        "flagged": 0,
        "breakdown_ms": parts,  # /rank at one client: mean ms per request of each measured part
    }
    bare_served = row["compiled_split_p50_ms"] if config.compile else row["split_p50_ms"]
    if "served_" in phases:  # /rank, one kept-alive http.client connection (after the httpx phases)
        row["cpu_ms_per_request"] = cpu_ms
        for key in ("p50_ms", "p99_ms", "mean_ms", "requests", "errors", "flagged"):
            row[f"keepalive_{key}"] = (
                round(keepalive[key], 2) if isinstance(keepalive[key], float) else keepalive[key]
            )
        row["keepalive_overhead"] = round(keepalive["p50_ms"] / bare_served, 2)
        row["errors"] += keepalive["errors"]
        row["flagged"] += keepalive["flagged"]
    for prefix, (latency, throughput) in phases.items():
        row.update({f"{prefix}{k}": round(v, 2) if isinstance(v, float) else v for k, v in latency.items()})
        row[f"{prefix}throughput_rps_cN"] = round(throughput["throughput_rps"], 1)
        row[f"{prefix}p50_ms_cN"] = round(throughput["p50_ms"], 1)
        row[f"{prefix}p99_ms_cN"] = round(throughput["p99_ms"], 1)
        row[f"{prefix}flag_kinds_cN"] = throughput["flag_kinds"]
        row["errors"] += latency["errors"] + throughput["errors"]
        row["flagged"] += latency["flagged"] + throughput["flagged"]
        # overhead: served p50 over the bare in-process path the service runs (compiled or eager split)
        row[f"{prefix}overhead"] = round(row[f"{prefix}p50_ms"] / bare_served, 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--users", type=int, default=8, help="users with a full history of L events")
    parser.add_argument("--requests", type=int, default=200, help="requests per phase (bounded)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time bound per phase")
    parser.add_argument("--warmup", type=int, default=60, help="requests before measuring (bounded by 60 s)")
    parser.add_argument("--bare-repeats", type=int, default=20)
    parser.add_argument(
        "--compile",
        choices=("on", "off"),
        default="on",
        help="the served config's torch.compile (the serving default is on)",
    )
    parser.add_argument(
        "--batching",
        choices=("off", "on", "both"),
        default="both",
        help="off: /rank; on: /rank_batch (adaptive batching); both: one after the other",
    )
    parser.add_argument(
        "--fused-attention",
        choices=("on", "off"),
        default="on",
        help="the served config's fused CPU attention kernel for DIN, LMN and IMN (the serving default is on)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="clients of the throughput phase")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="the ranker's torch threads, served and in process (0: the serving default, chosen at start-up)",
    )
    parser.add_argument(
        "--history-lengths-from",
        metavar="DATASET",
        help="give the users real history lengths from this dataset (e.g. ml-100k) instead of full L; "
        "requests then cycle over 198 users and the bare figures are the median user's",
    )
    parser.add_argument(
        "--lmn-query-bias",
        choices=("random", "zero"),
        default="random",
        help="LMN's random query biases as drawn (each request reads ~250 distinct slots) or zeroed "
        "(thousands, as a trained model reads; benchmarks/lmn_item_rows.py does the same)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        for length in args.lengths:
            spec, repo, lengths = make_world(root, length, args.users, args.history_lengths_from)
            for name in args.models:
                row = run_one(name, length, spec, repo, root / "registry", args, lengths)
                rows.append(row)
                print(json.dumps(row), flush=True)
    header = ("| model | L | bare forward p50 | split p50 | compiled split p50 | endpoint | served p50 | "
              "served p99 | overhead | req/s (c=N) | p99 (c=N) |")  # fmt: skip
    print("\n" + header + "\n" + "|---" * 11 + "|")
    keepalive_rows = []
    for r in rows:
        name = r["model"] + (" (1M slots, 2 shards)" if r["shards"] else "")
        for prefix, endpoint in (("served_", "/rank"), ("batched_", "/rank_batch")):
            if f"{prefix}p50_ms" not in r:
                continue
            print(f"| {name} | {r['L']} | {r['forward_p50_ms']:.1f} ms | {r['split_p50_ms']:.1f} ms | "
                  f"{r['compiled_split_p50_ms']:.1f} ms | {endpoint} | {r[prefix + 'p50_ms']:.1f} ms | "
                  f"{r[prefix + 'p99_ms']:.1f} ms | {r[prefix + 'overhead']:.2f}x | "
                  f"{r[prefix + 'throughput_rps_cN']:.0f} | {r[prefix + 'p99_ms_cN']:.0f} ms |")  # fmt: skip
        if "keepalive_p50_ms" in r:
            keepalive_rows.append(
                f"| {name} | {r['L']} | {r['compiled_split_p50_ms']:.1f} ms | {r['served_p50_ms']:.1f} ms | "
                f"{r['served_p99_ms']:.1f} ms | {r['keepalive_p50_ms']:.1f} ms | {r['keepalive_p99_ms']:.1f} ms | "
                f"{r['keepalive_overhead']:.2f}x |"
            )
    if keepalive_rows:
        print("\n/rank at one client, httpx loop against one kept-alive http.client connection:\n")
        print("| model | L | compiled split p50 | httpx p50 | httpx p99 | keep-alive p50 | keep-alive p99 | "
              "keep-alive / compiled split |\n" + "|---" * 8 + "|")  # fmt: skip
        print("\n".join(keepalive_rows))
    columns = ("http", "rank", *STAGES, "shard_call", "inside_shard", "gc", "gc_passes_over_1ms")
    print("\nWhere /rank's time went (one client; means in ms; the services' own /metrics):\n")
    print("| model | L | client | " + " | ".join(columns) + " |\n" + "|---" * (3 + len(columns)) + "|")
    for r in rows:
        if r["breakdown_ms"]:
            digits = {"gc": 3, "gc_passes_over_1ms": 0}  # gc: a few µs per request; passes: a count
            cells = " | ".join(
                f"{r['breakdown_ms'].get(c, float('nan')):.{digits.get(c, 1)}f}" for c in columns
            )
            print(f"| {r['model']} | {r['L']} | {r['served_mean_ms']:.1f} | {cells} |")
    if args.json:
        payload = {
            "command": "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/serving.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "weights": "random (serving cost does not depend on them)",
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return rows


if __name__ == "__main__":
    main()
