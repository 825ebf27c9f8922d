"""rlhfkit against TRL, side by side (issue 13 §3).

    python benchmarks/run.py [algo ...] [--steps N] [--repeats K] [--threads T] [--out results.json]

Each algorithm runs ``--repeats`` times on each side, interleaved (rlhfkit, TRL, rlhfkit, TRL, …), every
run in its own fresh process (:mod:`benchmarks.child`) with the same thread count, on the same tiny
Llama and data files (:mod:`benchmarks.workload`, made once under ``--cache``). PPO runs on rlhfkit only
(TRL 1.16 has no PPO) and is compared with TRL's GRPO at the same generated tokens (batch ×
max_new_tokens). Prints a markdown table and writes every raw time to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report  # noqa: E402
from benchmarks.workload import ALGOS, SHAPES, BenchSpec, parameter_count, prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhfkit-bench"


def cpu_info() -> dict:
    """lscpu's model name and whether the CPU has avx512_bf16 / AMX (bf16 in hardware)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("Flags", "").split())
    return {"cpu": fields.get("Model name", "unknown"), "avx512_bf16": "yes" if "avx512_bf16" in flags else "no",
            "amx": "yes" if {"amx_bf16", "amx_tile"} & flags else "no"}


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1", WANDB_DISABLED="true")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("WORLD_SIZE", None)
    return env


def gemm_peak(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048)) -> dict:
    """The fp32 GEMM peak measured in a fresh process with ``threads`` threads."""
    cmd = [sys.executable, "-m", "benchmarks.gemm_peak", "--threads", str(threads), "--sizes", *map(str, sizes)]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_side(side: str, algo: str, job: dict, workdir: Path, *, threads: int) -> dict:
    """One side of one algorithm in a fresh process; its result, or {"error": ...} when it failed."""
    job_path = workdir / f"job-{side}-{algo}.json"
    result_path = workdir / f"result-{side}-{algo}-{time.time_ns()}.json"
    job_path.write_text(json.dumps({**job, "threads": threads, "workdir": str(workdir)}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child", side, algo, str(job_path), str(result_path)],
                          cwd=ROOT, env=_env(threads), capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.exists():
        return {"side": side, "algo": algo, "error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(result_path.read_text())


def trl_algo(algo: str) -> str:
    """What the TRL side runs for ``algo``: the same algorithm, or GRPO for PPO (TRL 1.16 has no PPO)."""
    return "grpo" if algo == "ppo" else algo


def benchmark(algos: list[str], spec: BenchSpec, *, repeats: int, threads: int, cache: Path,
              gemm_sizes: tuple[int, ...] = (512, 1024, 2048), log=print) -> dict:
    """Run every algorithm ``repeats`` times per side, interleaved; return the results.json content."""
    paths = prepare(cache, spec)
    n_lm = parameter_count(paths["model"])
    n_rm = parameter_count(paths["reward_init"], matmul_only=True)
    peak = gemm_peak(threads, gemm_sizes)  # measured again after the runs; the higher one is the peak
    log(f"# {cpu_info()['cpu']}, {threads} thread(s), fp32 GEMM peak {peak['gflops']:.1f} GFLOP/s")
    job = {"spec": spec.as_dict(), "paths": paths}
    raw: dict[str, dict[str, list[dict]]] = {}
    summaries, errors = [], []
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-") as tmp:
        for algo in algos:
            runs: dict[str, list[dict]] = {"rlhfkit": [], "trl": []}
            for r in range(repeats):
                for side, name in (("rlhfkit", algo), ("trl", trl_algo(algo))):
                    result = run_side(side, name, job, Path(tmp), threads=threads)
                    if "error" in result:
                        errors.append(result)
                        log(f"{algo} [{side} {name}] repeat {r + 1}: FAILED\n{result['error']}")
                        continue
                    runs[side].append(result)
                    log(f"{algo} [{side} {name}] repeat {r + 1}: loop {result['loop_s']:.2f} s, "
                        f"user {result['user_s']:.2f} s, RSS {result['peak_rss_mb']:.0f} MB, "
                        f"step-1 loss {result['step1_loss']}")
            raw[algo] = runs
    after = gemm_peak(threads, gemm_sizes)
    peak = max(peak, after, key=lambda p: p["gflops"])
    header = {**cpu_info(), "threads": threads, "peak_gflops": peak["gflops"], "gemm_size": peak["size"],
              "n_params": n_lm, "n_params_reward_matmul": n_rm, "steps": spec.steps, "batch_size": spec.batch_size,
              "repeats": repeats}
    for algo, runs in raw.items():
        runs = {side: rs for side, rs in runs.items() if rs}
        if len(runs) == 2 and len(runs["rlhfkit"]) != len(runs["trl"]):  # a failed repeat: pair what is left
            n = min(len(rs) for rs in runs.values())
            runs = {side: rs[:n] for side, rs in runs.items()}
        if runs:
            n = n_rm if algo == "reward" else n_lm
            summaries.append(report.summarise(algo, runs, batch_size=spec.batch_size, steps=spec.steps,
                                              n_params={"rlhfkit": n, "trl": n}, peak_gflops=peak["gflops"]))
    return {"header": header, "spec": spec.as_dict(), "summaries": summaries, "raw": raw, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rlhfkit against TRL, side by side (issue 13 §3)")
    parser.add_argument("algos", nargs="*", default=list(ALGOS), help=f"any of {', '.join(ALGOS)} (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per side (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side (default 1)")
    parser.add_argument("--model", default="6m", choices=sorted(SHAPES),
                        help="model shape: 6m (the ratio benchmark's, default) or 30m (the MFU target's)")
    parser.add_argument("--out", default="results.json", help="raw results (default results.json)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the model and data are made once")
    args = parser.parse_args(argv)
    unknown = [a for a in args.algos if a not in ALGOS]
    if unknown:
        parser.error(f"unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGOS)}")
    if args.steps < 2 or args.repeats < 1 or args.threads < 1:
        parser.error("--steps must be >= 2 (loop time runs from step 1's end), --repeats and --threads >= 1")
    spec = BenchSpec(steps=args.steps).with_shape(args.model)
    results = benchmark(args.algos, spec, repeats=args.repeats, threads=args.threads, cache=Path(args.cache),
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(report.markdown(results["header"], results["summaries"]))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
