"""From the children's raw results to the numbers and the markdown table (pure functions, no timing here).

Definitions (also in the README's "Speed against TRL"):
- samples/s (loop): (steps − 1) · batch / loop_s, where loop_s runs from the end of step 1 to the end of
  the last step (model load, data preparation, reference precompute and the first step's warm-up excluded);
- samples/s (user): steps · batch / user_s, user_s being every second of the run call a user waits for
  (model load, precompute, every step, the final save; not the libraries' import time);
- ratio: rlhfkit samples/s ÷ TRL samples/s in each repeat (A B pairs), then the median of the ratios;
- MFU: model FLOPs (6·N per token of a forward with gradients, 2·N per token of one without: reference
  passes, generation) over loop_s, divided by the measured fp32 GEMM peak at the same thread count.
"""

from __future__ import annotations

import statistics

TIME_ORDER = ("time/generate", "time/score", "time/reference", "time/train")
"""the order of an online step's phases in the PPO row (rlhfkit's ``time/*`` metrics; its reference
phase holds the old-policy, reference and value forward passes, one chunked loop)"""


def samples_per_s(result: dict, *, batch_size: int, steps: int, column: str) -> float:
    """Samples (examples, pairs or responses) per second of a run, by loop time or by user time."""
    if column == "loop":
        return (steps - 1) * batch_size / result["loop_s"]
    if column == "user":
        return steps * batch_size / result["user_s"]
    raise ValueError(f"column must be 'loop' or 'user', got {column!r}")


def model_flops(tokens: dict, n_params: int) -> float:
    """6·N FLOPs per token through a forward with gradients (forward 2N + backward 4N, Kaplan et al. 2020),
    2·N per token through one without."""
    return 6.0 * n_params * tokens.get("grad", 0) + 2.0 * n_params * tokens.get("no_grad", 0)


def mfu(result: dict, *, n_params: int, peak_gflops: float) -> float:
    """Model FLOPs utilisation of the timed loop (steps 2..N) against the GEMM peak."""
    return model_flops(result["loop_tokens"], n_params) / result["loop_s"] / (peak_gflops * 1e9)


def step_mfu(result: dict, *, n_params: int, peak_gflops: float) -> list[float]:
    """Model FLOPs utilisation of each timed step (2..N), from its own tokens and time."""
    return [model_flops(tokens, n_params) / seconds / (peak_gflops * 1e9)
            for tokens, seconds in zip(result.get("step_tokens", []), result.get("step_s", []))]


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over repeats of ours[i] / theirs[i] (each repeat's A and B ran back to back)."""
    if not ours or len(ours) != len(theirs):
        raise ValueError(f"need paired repeats, got {len(ours)} and {len(theirs)}")
    return statistics.median(a / b for a, b in zip(ours, theirs))


def summarise(algo: str, runs: dict[str, list[dict]], *, batch_size: int, steps: int, n_params: dict[str, int],
              peak_gflops: float) -> dict:
    """One algorithm's summary from its repeats ``runs = {"rlhfkit": [...], "trl": [...]}``."""
    out: dict = {"algo": algo}
    speeds: dict[str, dict[str, list[float]]] = {}
    for side, results in runs.items():
        speeds[side] = {c: [samples_per_s(r, batch_size=batch_size, steps=steps, column=c) for r in results]
                        for c in ("loop", "user")}
        out[side] = {
            "samples_per_s": statistics.median(speeds[side]["loop"]),
            "samples_per_s_user": statistics.median(speeds[side]["user"]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "step1_loss": results[0].get("step1_loss"),
            "mfu": statistics.median(mfu(r, n_params=n_params[side], peak_gflops=peak_gflops) for r in results),
            "mfu_steps": [step_mfu(r, n_params=n_params[side], peak_gflops=peak_gflops) for r in results],
            "unmatched": results[0].get("unmatched", []),
        }
        split = [r.get("time_split") or {} for r in results]
        if any(split):
            keys = sorted({k for s in split for k in s})
            out[side]["time_split"] = {k: statistics.median(s.get(k, 0.0) for s in split) for k in keys}
    if "rlhfkit" in speeds and "trl" in speeds:
        out["ratio"] = median_ratio(speeds["rlhfkit"]["loop"], speeds["trl"]["loop"])
        out["ratio_user"] = median_ratio(speeds["rlhfkit"]["user"], speeds["trl"]["user"])
        a, b = out["rlhfkit"]["step1_loss"], out["trl"]["step1_loss"]
        out["step1_loss_diff"] = abs(a - b) if a is not None and b is not None else None
    return out


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown(header: dict, summaries: list[dict]) -> str:
    """The table printed at the end of a run (and pasted into the README by hand)."""
    lines = [f"CPU: {header['cpu']} (avx512_bf16: {header['avx512_bf16']}, amx: {header['amx']}); "
             f"threads per side: {header['threads']}; fp32 GEMM peak: {header['peak_gflops']:.1f} GFLOP/s; "
             f"model: {header['n_params'] / 1e6:.2f}M parameters; {header['steps']} steps × batch "
             f"{header['batch_size']}, {header['repeats']} interleaved repeats (rlhfkit, TRL, …)", ""]
    offline = [s for s in summaries if s["algo"] != "ppo"]
    if offline:
        lines += ["| algo | rlhfkit samples/s | TRL samples/s | ratio (loop) | ratio (user) | RSS rlhfkit MB | "
                  "RSS TRL MB | step-1 loss rlhfkit | step-1 loss TRL | MFU rlhfkit | MFU TRL |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in offline:
            a, b = s.get("rlhfkit", {}), s.get("trl", {})
            lines.append(
                f"| {s['algo']} | {_f(a.get('samples_per_s'), '.2f')} | {_f(b.get('samples_per_s'), '.2f')} | "
                f"{_f(s.get('ratio'), '.2f')}× | {_f(s.get('ratio_user'), '.2f')}× | "
                f"{_f(a.get('peak_rss_mb'), '.0f')} | {_f(b.get('peak_rss_mb'), '.0f')} | "
                f"{_f(a.get('step1_loss'), '.6f')} | {_f(b.get('step1_loss'), '.6f')} | "
                f"{_f(a.get('mfu'), '.1%')} | {_f(b.get('mfu'), '.1%')} |")
    for s in summaries:
        if s["algo"] != "ppo":
            continue
        a, b = s.get("rlhfkit", {}), s.get("trl", {})
        split = a.get("time_split", {})
        total = sum(split.values()) or float("nan")
        order = sorted(split, key=lambda k: TIME_ORDER.index(k) if k in TIME_ORDER else len(TIME_ORDER))
        parts = ", ".join(f"{k.split('/')[-1]} {split[k] / total:.0%}" for k in order)
        lines += ["", "| PPO (rlhfkit) episodes/s | TRL GRPO samples/s | ratio (loop) | ratio (user) | "
                  "RSS rlhfkit MB | RSS TRL GRPO MB | MFU rlhfkit | time split |", "|---|---|---|---|---|---|---|---|",
                  f"| {_f(a.get('samples_per_s'), '.2f')} | {_f(b.get('samples_per_s'), '.2f')} | "
                  f"{_f(s.get('ratio'), '.2f')}× | {_f(s.get('ratio_user'), '.2f')}× | "
                  f"{_f(a.get('peak_rss_mb'), '.0f')} | {_f(b.get('peak_rss_mb'), '.0f')} | "
                  f"{_f(a.get('mfu'), '.1%')} | {parts or '—'} |",
                  "(time split: generate / score / reference = the old-policy, reference and value passes / train)"]
    unmatched = sorted({u for s in summaries for u in s.get("rlhfkit", {}).get("unmatched", [])})
    if unmatched:
        lines += ["", f"WARNING: this rlhfkit has no {', '.join(unmatched)}: the two sides do NOT do the same work "
                  "(AdamW betas (0.9, 0.95) and a shuffled order on rlhfkit's side); merge branch rlopt first."]
    return "\n".join(lines)
