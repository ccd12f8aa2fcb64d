"""Why the CPU scan is a C++ kernel: what per-step torch ops, a chunked scan and streaming stores cost here.

Measures, in one run, at L=1000 and N = B·D = 8192 channels (the ``scan_speed.py`` shape):
1. the cost of one small torch op (an ``addcmul`` on one 8,192-float step, single-threaded) and of one
   1 MiB ``addcmul`` (two threads), in this process and in a child without ``OMP_WAIT_POLICY=PASSIVE``:
   the second thread's wake-up is what PASSIVE adds to every op large enough to be split;
2. the scan's forward pass as the pure-torch per-step loop (the ``torch`` backend), as a chunked
   two-pass scan in torch ops (per-chunk end states over all chunks at once, a carry pass over chunks,
   then the chunks again from their carries; T steps per chunk), and as the C++ kernel;
3. the C++ kernel's forward and backward with and without streaming stores.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_cpu_options.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

_SPINNING_CHILD = "LONGREC_BENCH_SPINNING_CHILD"  # set for the child that measures without PASSIVE
if _SPINNING_CHILD not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from longrec.kernels.scan import _forward_steps, _load_cpu_kernel  # noqa: E402
from longrec.runtime import retain_freed_memory  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``fn`` in milliseconds over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def op_costs(repeats: int) -> dict[str, float]:
    """µs per op: a one-step (8,192-float) addcmul and a 1 MiB addcmul, 100 back to back."""
    costs = {}
    for name, numel in (("small_op_us", 8192), ("one_mib_op_us", 262144)):
        x, y, out = torch.rand(numel), torch.rand(numel), torch.empty(numel)
        costs[name] = (
            best_ms(lambda x=x, y=y, out=out: [torch.addcmul(x, y, x, out=out) for _ in range(100)], repeats)
            * 10
        )
    return costs


def chunked_forward(a: torch.Tensor, beta: torch.Tensor, chunk: int) -> torch.Tensor:
    """Two-pass chunked scan over [L, N] rows in torch ops (the alternative measured, not library code)."""
    steps, channels = a.shape
    chunks = steps // chunk
    main = chunks * chunk
    h = torch.empty_like(beta)
    a3, b3, h3 = (t[:main].view(chunks, chunk, channels) for t in (a, beta, h))
    state = b3[:, 0].clone()  # pass 1: every chunk's end state from a zero start, all chunks at once
    for t in range(1, chunk):
        torch.addcmul(b3[:, t], a3[:, t], state, out=state)
    decay = torch.prod(a3, dim=1)
    carry = torch.zeros_like(state)  # carry[c]: the state entering chunk c
    for c in range(1, chunks):
        torch.addcmul(state[c - 1], decay[c - 1], carry[c - 1], out=carry[c])
    torch.addcmul(b3[:, 0], a3[:, 0], carry, out=h3[:, 0])  # pass 2: the chunks again, from their carries
    for t in range(1, chunk):
        torch.addcmul(b3[:, t], a3[:, t], h3[:, t - 1], out=h3[:, t])
    for t in range(main, steps):  # the tail that does not fill a chunk
        torch.addcmul(beta[t], a[t], h[t - 1], out=h[t])
    return h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--output", type=Path, default=RESULTS / "scan_cpu_options")
    parser.add_argument("--op-costs-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.op_costs_only:  # the child without PASSIVE
        print(json.dumps(op_costs(args.repeats)))
        return
    retain_freed_memory()
    kernel = _load_cpu_kernel()
    if kernel is None:
        raise SystemExit("the CPU scan kernel could not be built (see the warning above)")

    results: dict[str, float] = {f"passive_{k}": v for k, v in op_costs(args.repeats).items()}
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {_SPINNING_CHILD: "1"}
    child = subprocess.run(
        [sys.executable, __file__, "--op-costs-only", "--repeats", str(args.repeats)],
        env=child_env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    results |= {f"spinning_{k}": v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}

    generator = torch.Generator().manual_seed(0)
    shape = (args.length, args.channels)
    a = 0.9 + 0.099 * torch.rand(shape, generator=generator)
    beta = torch.randn(shape, generator=generator)
    grad = torch.randn(shape, generator=generator)
    a3, beta3, grad3 = (t.view(1, *shape) for t in (a, beta, grad))
    reference = _forward_steps(a3, beta3)
    results["forward_torch_per_step_ms"] = best_ms(lambda: _forward_steps(a3, beta3), args.repeats)
    for chunk in args.chunks:
        torch.testing.assert_close(chunked_forward(a, beta, chunk), reference[0], rtol=1e-4, atol=1e-4)
        results[f"forward_torch_chunked_T{chunk}_ms"] = best_ms(
            lambda c=chunk: chunked_forward(a, beta, c), args.repeats
        )
    h3 = kernel.scan_forward(a3, beta3)
    for streaming, name in ((1, "streaming"), (0, "normal_stores")):
        results[f"forward_cpp_{name}_ms"] = best_ms(
            lambda s=streaming: kernel.scan_forward(a3, beta3, s), args.repeats
        )
        results[f"backward_cpp_{name}_ms"] = best_ms(
            lambda s=streaming: kernel.scan_backward(a3, h3, grad3, s), args.repeats
        )

    width = max(len(key) for key in results)
    lines = [
        f"CPU scan options, L={args.length}, N={args.channels}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (the spinning_* rows: a child without it)",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {key} | {value:.2f} |" for key, value in results.items()],
    ]
    for key, value in results.items():
        print(f"{key:<{width}}  {value:9.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
