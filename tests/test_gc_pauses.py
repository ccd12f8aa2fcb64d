"""The ranker's garbage-collector pause metric (``longrec_gc_pause_seconds``) must never block a thread.

A collection can start inside any allocation, including inside a prometheus metric update, which in
multiprocess mode (as BentoML serves) holds a lock that is not reentrant. A GC callback that observed a
metric there deadlocked the thread; this runs two threads observing metrics while the collector runs very
often, in a subprocess (multiprocess mode must be set before prometheus_client is imported).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, threading
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from longrec.serving.service_support import flush_gc_pauses, serving_metrics, watch_gc_pauses

    metrics = serving_metrics()
    watch_gc_pauses()
    gc.set_threshold(50, 2, 2)  # collect every few allocations: a collection inside an update is likely
    finished = []

    def work():
        junk = []
        for i in range(30_000):
            metrics["latency"].labels(arm="main").observe(0.001)
            junk.append([i])
            if len(junk) > 500:
                junk = []
        finished.append(1)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if len(finished) != 2:
        print("DEADLOCK", flush=True)
        os._exit(3)
    flush_gc_pauses()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    line = next(l for l in text.splitlines() if l.startswith('longrec_gc_pause_seconds_count{generation="0"}'))
    print("PASSES", float(line.split()[-1]), flush=True)
    """
)


def test_gc_pause_metric_never_deadlocks_a_thread(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(metrics_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    passes = float(result.stdout.split("PASSES")[1].split()[0])
    assert passes > 100  # the collector ran, and each pass reached the histogram
