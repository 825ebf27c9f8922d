"""One side of one algorithm in a fresh process: ``python -m benchmarks.child SIDE ALGO JOB.json RESULT.json``.

A fresh process per run keeps the measurement honest: its peak RSS (``ru_maxrss``) is that side's
alone, and neither side inherits the other's imports, caches or allocator state.

What it measures, the same way on both sides (hooks in torch itself, not in either library):
- every optimiser step's end time (torch's global optimizer step post-hook): ``loop_s`` is the time of
  steps 2..N (from the end of step 1 to the end of step N), so model loading, data preparation, a
  reference precompute and the first step's warm-up stay out of it;
- ``user_s``: the whole call a user waits for, from before the model is loaded to after the final
  model is saved (precompute included; the libraries' import time is ``import_s``, apart);
- the tokens each model forward takes in, through a global forward pre-hook on ``nn.Embedding``:
  with gradients enabled they cost 6·N FLOPs each (forward + backward), without 2·N (reference
  passes, generation) — the numerator of model FLOPs utilisation, per step and over the loop. The two
  global hooks cost a few microseconds per module call, the same on both sides.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    side, algo, job_path, result_path = argv
    job = json.loads(Path(job_path).read_text())
    t_start = time.perf_counter()
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    threads = int(job["threads"])
    torch.set_num_threads(threads)
    stamps: list[float] = []
    tokens = {"grad": 0, "no_grad": 0}
    at_stamp: list[dict[str, int]] = []  # the token counters at each step's end

    def after_step(*_):
        stamps.append(time.perf_counter())
        at_stamp.append(dict(tokens))

    def count_tokens(module, args):
        if isinstance(module, torch.nn.Embedding) and args:
            tokens["grad" if torch.is_grad_enabled() else "no_grad"] += int(args[0].numel())

    register_optimizer_step_post_hook(after_step)
    torch.nn.modules.module.register_module_forward_pre_hook(count_tokens)

    from benchmarks.workload import BenchSpec

    spec = BenchSpec.from_dict(job["spec"])
    t_import = time.perf_counter()
    if side == "rlhfkit":
        from benchmarks import side_rlhfkit as module

        unmatched = module.missing_options()
    elif side == "trl":
        from benchmarks import side_trl as module

        import trl  # noqa: F401  (counted in import_s)
        unmatched = []
    else:
        raise SystemExit(f"unknown side {side!r} (rlhfkit or trl)")
    import_s = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-{algo}-", dir=job.get("workdir")) as tmp:
        t0 = time.perf_counter()
        out = module.run(algo, spec, job["paths"], Path(tmp) / "run")
        user_s = time.perf_counter() - t0
    if len(stamps) != spec.steps:
        raise SystemExit(f"{side} {algo}: {len(stamps)} optimiser steps seen, {spec.steps} expected")
    loop_tokens = {k: at_stamp[-1][k] - at_stamp[0][k] for k in tokens}
    step_tokens = [{k: b[k] - a[k] for k in tokens} for a, b in zip(at_stamp, at_stamp[1:])]
    result = {
        "side": side, "algo": algo, "threads": threads, "torch_threads": torch.get_num_threads(),
        "import_s": import_s, "user_s": user_s, "startup_s": t_import - t_start,
        "loop_s": stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan"),
        "step_s": [b - a for a, b in zip(stamps, stamps[1:])],
        "first_step_end_s": stamps[0] - t0,
        "loop_tokens": loop_tokens, "step_tokens": step_tokens, "total_tokens": dict(tokens),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "unmatched": unmatched, **out,
    }
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
