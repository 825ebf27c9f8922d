"""This machine's measured fp32 GEMM peak, the denominator of model FLOPs utilisation.

``python -m benchmarks.gemm_peak --threads T`` prints {"gflops": ..., "size": ..., "threads": T}.
An (n × n) @ (n × n) product costs 2·n³ FLOPs; the peak is the best rate over a few sizes, each timed
as the best of several runs after a warm-up (the best, not the mean: a shared machine's interruptions
only ever make a run slower). Measured at the run's thread count, since MFU compares like with like.
"""

from __future__ import annotations

import argparse
import json
import time


def matmul_flops(n: int) -> float:
    """FLOPs of one (n, n) @ (n, n) product: n² outputs, each n multiplies and n adds."""
    return 2.0 * n ** 3


def measure_peak(threads: int, *, sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5,
                 min_seconds: float = 0.2) -> dict:
    """Best fp32 GEMM rate (GFLOP/s) over ``sizes`` with ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    best = {"gflops": 0.0, "size": 0}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        once = max(time.perf_counter() - t, 1e-9)
        inner = max(1, int(min_seconds / once))  # enough products for a measurable interval
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            rate = matmul_flops(n) * inner / (time.perf_counter() - t) / 1e9
            if rate > best["gflops"]:
                best = {"gflops": rate, "size": n}
    return {**best, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    args = parser.parse_args(argv)
    print(json.dumps(measure_peak(args.threads, sizes=tuple(args.sizes))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
