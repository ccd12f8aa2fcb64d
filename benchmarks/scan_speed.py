"""Speed of the BD-LRU scan, forward + backward: serial autograd loop vs the pure-torch Function vs the
compiled CPU kernel (the CPU default) vs Triton.

All figures come from one run, so ratios compare like with like. The memory-bandwidth floor is the bytes
a fwd+bwd scan must move (read a, β, write h; read ∂h, a, h, write ∂a, ∂β = 8 tensors) divided by the
copy bandwidth measured here (bytes read + written per second by ``Tensor.copy_`` of a 128 MiB buffer).
The copy is measured before every length and the best figure of the whole run is used for every floor:
it swings by up to 1.5× from minute to minute on these VMs, and the best one gives the strictest floor.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_speed.py \
        --lengths 64 256 1000 4096 --batch 64 --channels 128

Serial baseline: the best autograd loop we have — ``unbind`` over time, one ``addcmul`` per step, one
``stack`` at the end (in-place writes into a pre-allocated output under autograd make every step copy
the whole buffer in backward, i.e. quadratic). Timed in both layouts; the faster one is the baseline.
The fast versions are timed on time-major input ([L, B, D], the layout RecBLR feeds them) and on
batch-first input ([B, L, D], which adds a transposing copy). Triton runs only on a GPU.

Allocator: every fwd+bwd allocates three fresh outputs (h, ∂a, ∂β: 31 MiB each at L=1000). glibc's
default maps blocks over 32 MiB afresh each time and gives freed memory back to the kernel, so the next
call page-faults it in again, at a cost that has nothing to do with the scan (on these VMs ~1 µs per
4 KiB page: +30 ms at L=2048, and 0–20 ms at random at L=1000, depending on the heap's layout). The
benchmark therefore keeps freed memory in the process as training does (``longrec.runtime``), so that it
times the scans; ``--default-malloc`` leaves glibc as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from longrec.kernels.scan import cpu_kernel_available, linear_scan, scan_reference  # noqa: E402
from longrec.runtime import retain_freed_memory  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs after one warm-up, in seconds."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(device: torch.device, sync: Callable[[], None], repeats: int) -> float:
    """Bytes moved per second (read + write) by a large device copy."""
    source = torch.empty(32 * 1024 * 1024, device=device)  # 128 MiB: far beyond any cache
    target = torch.empty_like(source)
    seconds = best_time(lambda: target.copy_(source), repeats, sync)
    return 2 * source.numel() * source.element_size() / seconds


def fwd_bwd(a: torch.Tensor, beta: torch.Tensor, grad: torch.Tensor, scan: Callable) -> Callable[[], None]:
    """A closure running scan forward and backward once."""

    def run() -> None:
        a.grad = beta.grad = None
        scan(a, beta).backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1000, 2048, 4096])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--output", type=Path, default=RESULTS / "scan_speed")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's trimming on")
    args = parser.parse_args()
    malloc = "default" if args.default_malloc or not retain_freed_memory() else "retain freed memory"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bandwidth = 0.0  # the best copy bandwidth of the run, measured before each length
    if device.type == "cpu" and not cpu_kernel_available():
        raise SystemExit("the CPU scan kernel could not be built (see the warning above)")
    print(f"device {device}, torch threads {torch.get_num_threads()}, malloc: {malloc}")

    rows = []
    for length in args.lengths:
        generator = torch.Generator().manual_seed(length)
        shape = (length, args.batch, args.channels)  # time-major
        a_tm = (0.9 + 0.099 * torch.rand(shape, generator=generator)).to(device).requires_grad_()
        beta_tm = torch.randn(shape, generator=generator).to(device).requires_grad_()
        grad_tm = torch.randn(shape, generator=generator).to(device)
        a_bf = a_tm.detach().transpose(0, 1).contiguous().requires_grad_()
        beta_bf = beta_tm.detach().transpose(0, 1).contiguous().requires_grad_()
        grad_bf = grad_tm.transpose(0, 1).contiguous()
        bandwidth = max(bandwidth, copy_bandwidth(device, sync, args.repeats))
        row: dict[str, float | int | None] = {"L": length, "bytes": 8 * a_tm.numel() * a_tm.element_size()}
        timings = {
            "serial_time_major_ms": fwd_bwd(a_tm, beta_tm, grad_tm, lambda a, b: scan_reference(a, b, 0)),
            "serial_batch_first_ms": fwd_bwd(a_bf, beta_bf, grad_bf, lambda a, b: scan_reference(a, b, 1)),
        }
        if device.type == "cpu":
            for backend in ("torch", "cpu"):
                timings[f"{backend}_time_major_ms"] = fwd_bwd(
                    a_tm,
                    beta_tm,
                    grad_tm,
                    lambda a, b, backend=backend: linear_scan(a, b, 0, backend=backend),
                )
                timings[f"{backend}_batch_first_ms"] = fwd_bwd(
                    a_bf,
                    beta_bf,
                    grad_bf,
                    lambda a, b, backend=backend: linear_scan(a, b, 1, backend=backend),
                )
        else:
            timings["triton_time_major_ms"] = fwd_bwd(
                a_tm, beta_tm, grad_tm, lambda a, b: linear_scan(a, b, 0, backend="triton")
            )
            timings["triton_batch_first_ms"] = fwd_bwd(
                a_bf, beta_bf, grad_bf, lambda a, b: linear_scan(a, b, 1, backend="triton")
            )
        for name, fn in timings.items():
            # The serial loop is slow at long L: fewer repeats keep the whole run to a few minutes.
            repeats = (
                max(1, args.repeats // 2) if name.startswith("serial") and length > 1024 else args.repeats
            )
            row[name] = best_time(fn, repeats, sync) * 1e3
        rows.append(row)
        print(f"L={length:5d}  " + "  ".join(f"{k[:-3]} {row[k]:.2f} ms" for k in timings), flush=True)

    # Floors and ratios once the whole run's best copy bandwidth is known.
    fast = "cpu" if device.type == "cpu" else "triton"
    print(f"best copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for row in rows:
        row["floor_ms"] = row.pop("bytes") / bandwidth * 1e3
        serial_best = min(row["serial_time_major_ms"], row["serial_batch_first_ms"])
        row["speedup_vs_serial"] = serial_best / row[f"{fast}_time_major_ms"]
        row["x_floor"] = row[f"{fast}_time_major_ms"] / row["floor_ms"]
        row["x_floor_batch_first"] = row[f"{fast}_batch_first_ms"] / row["floor_ms"]
        if device.type == "cpu":
            row["torch_x_floor"] = row["torch_time_major_ms"] / row["floor_ms"]
        print(
            f"L={row['L']:5d}  serial {serial_best:8.2f} ms  {fast} {row[f'{fast}_time_major_ms']:7.2f} ms "
            f"(batch-first {row[f'{fast}_batch_first_ms']:7.2f})  floor {row['floor_ms']:6.2f} ms  "
            f"speed-up {row['speedup_vs_serial']:5.1f}x  {row['x_floor']:4.2f}x floor",
            flush=True,
        )

    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "channels": args.channels,
        "best_copy_bandwidth_gbps": bandwidth / 1e9,
        "malloc": malloc,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }
    args.output.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    columns = [key for key in rows[0] if key != "L"]
    lines = [
        f"Scan fwd+bwd, B={args.batch}, D={args.channels}, {device} ({torch.get_num_threads()} threads), "
        f"best copy bandwidth {bandwidth / 1e9:.1f} GB/s, malloc: {malloc}",
        "",
        "| L | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {row['L']} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |" for row in rows]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
