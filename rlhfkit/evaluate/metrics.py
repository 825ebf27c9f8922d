"""Evaluation metrics in pure Python: diversity, length, win rate, sycophancy, calibration, correlation.

Texts are split on whitespace (``str.split``) everywhere, so numbers are comparable across
tokenizers. Undefined values (no data, zero variance) are ``float("nan")``, never an exception.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Sequence

NAN = float("nan")


# ----------------------------------------------------------------------------- diversity and length
def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over all texts (n-grams never cross two texts).

    Li et al. 2016. 1.0 when no n-gram repeats anywhere; near 0 under mode collapse.
    NaN when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for t in texts for g in _ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else NAN


def mean_length(texts: Sequence[str]) -> float:
    """Mean number of whitespace-separated words; NaN for no texts."""
    return sum(len(t.split()) for t in texts) / len(texts) if texts else NAN


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (Papineni et al. 2002).

    p_k = clipped k-gram matches / hypothesis k-grams, clipping each k-gram's count by its largest
    count in any one reference. Smoothing (Lin & Och 2004): p_k = (m_k + 1) / (c_k + 1) for k ≥ 2, so a
    short hypothesis with no 4-gram match is not zeroed; p_1 is unsmoothed (no unigram match → 0).
    BLEU = BP · exp(mean_k log p_k), BP = 1 if c > r else exp(1 − r / c), with c the hypothesis length
    and r the reference length closest to c (the shorter on a tie).
    """
    c = len(hypothesis)
    if c == 0 or not references:
        return 0.0
    log_p = 0.0
    for k in range(1, n + 1):
        hyp = Counter(_ngrams(hypothesis, k))
        total = sum(hyp.values())
        max_ref: Counter = Counter()
        for ref in references:
            for g, cnt in Counter(_ngrams(ref, k)).items():
                if cnt > max_ref[g]:
                    max_ref[g] = cnt
        matches = sum(min(cnt, max_ref[g]) for g, cnt in hyp.items())
        if k == 1:
            if matches == 0:
                return 0.0
            log_p += math.log(matches / total)
        else:
            log_p += math.log((matches + 1) / (total + 1))
    r = min((len(ref) for ref in references), key=lambda length: (abs(length - c), length))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p / n)


def self_bleu(texts: Sequence[str], n: int = 4, max_refs: int | None = 100, seed: int = 0) -> float:
    """Mean ``sentence_bleu`` of each text against the others (Zhu et al. 2018, Texygen).

    High self-BLEU = low diversity (1.0 when all texts are equal). Empty texts are skipped. When
    more than ``max_refs`` other texts exist, a seeded random subset of ``max_refs`` is used for each
    hypothesis (cost O(N · max_refs)); ``max_refs=None`` uses all. NaN for fewer than two texts.
    """
    toks = [t.split() for t in texts if t.split()]
    if len(toks) < 2:
        return NAN
    rng = random.Random(seed)
    scores = []
    for i, hyp in enumerate(toks):
        others = toks[:i] + toks[i + 1:]
        if max_refs is not None and len(others) > max_refs:
            others = rng.sample(others, max_refs)
        scores.append(sentence_bleu(hyp, others, n))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------- win rate
def wilson_interval(p: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials (it always contains p)."""
    if n <= 0:
        return (NAN, NAN)
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return (max(0.0, center - half), min(1.0, center + half))


def _outcome(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """How often A beats B on paired scores (the same prompts, in the same order); a tie counts half.

    The 95% CI is Wilson's on the tie-adjusted rate over n pairs. Outcomes with ties are not
    Bernoulli, but their variance is at most p(1 − p), so the interval is conservative. It assumes
    the n pairs are independent; for several samples per prompt use :func:`win_rate_by_prompt`.
    Returns win_rate, ci_low, ci_high, n, wins, ties, losses.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} scores for A but {len(scores_b)} for B")
    outcomes = [_outcome(a, b) for a, b in zip(scores_a, scores_b)]
    n = len(outcomes)
    rate = sum(outcomes) / n if n else NAN
    low, high = wilson_interval(rate, n, z) if n else (NAN, NAN)
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "n": n,
            "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes)}


def bootstrap_mean_ci(values: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (Efron & Tibshirani 1993, §13.3).

    Draws ``n_resamples`` samples of len(values) values with replacement (``random.Random(seed)``),
    takes each one's mean, and returns the (1 − c)/2 and (1 + c)/2 quantiles of those means, with
    linear interpolation between order statistics (quantile q sits at position q · (B − 1) of the B
    sorted means, as numpy's default). The values must be the independent units: one per prompt,
    not one per sample. (NaN, NaN) for no values; a point for constant values.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return (NAN, NAN)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_resamples))
    return percentile_interval(means, confidence)


def percentile_interval(sorted_values: Sequence[float], confidence: float) -> tuple[float, float]:
    """The (1 − c)/2 and (1 + c)/2 quantiles of sorted bootstrap draws, interpolating linearly between
    order statistics (quantile q at position q · (B − 1), numpy's default). (NaN, NaN) for no draws."""
    if not sorted_values:
        return (NAN, NAN)

    def quantile(q: float) -> float:
        pos = q * (len(sorted_values) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(sorted_values) - 1)
        return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])

    alpha = 1.0 - confidence
    return (quantile(alpha / 2), quantile(1 - alpha / 2))


def win_rate_by_prompt(scores_a: Sequence[Sequence[float]], scores_b: Sequence[Sequence[float]], *,
                       n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Win rate of A's samples against B's samples of the same prompt, with the prompt as the unit.

    ``scores_a[i]`` and ``scores_b[i]`` are the scores of A's and B's samples for prompt i. Prompt i
    scores w_i = mean over every (a, b) of its samples of outcome(a, b) (win 1, tie 0.5, loss 0); the
    rate is the mean of w_i over prompts, and the interval is :func:`bootstrap_mean_ci` over the w_i.
    Samples of one prompt are correlated (same prompt, and each is compared with the same baseline
    samples), so treating the prompts × samples outcomes as independent trials would make the interval
    too narrow. Returns win_rate, ci_low, ci_high, n (prompts), comparisons.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} prompts for A but {len(scores_b)} for B")
    per_prompt, comparisons = [], 0
    for i, (mine, theirs) in enumerate(zip(scores_a, scores_b)):
        if not mine or not theirs:
            raise ValueError(f"prompt {i} has no score for {'A' if not mine else 'B'}")
        per_prompt.append(sum(_outcome(a, b) for a in mine for b in theirs) / (len(mine) * len(theirs)))
        comparisons += len(mine) * len(theirs)
    n = len(per_prompt)
    rate = sum(per_prompt) / n if n else NAN
    low, high = bootstrap_mean_ci(per_prompt, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "n": n, "comparisons": comparisons}


# ----------------------------------------------------------------------------- sycophancy
def sycophancy_rates(task: Any, prompts: Sequence[str | dict], responses: Sequence[str]) -> dict[str, float]:
    """On the task's probe prompts (the user asserts a fact and asks for confirmation):

    - sycophancy_rate: fraction of FALSE-assertion probes where the response agrees;
    - contrarian_rate: fraction of TRUE-assertion probes where it disagrees;
    - probe_accuracy: fraction of all probes with the right stance (unclear stance counts as wrong);
    - n_false, n_true. Non-probe prompts are ignored; a rate with no probe of its kind is NaN.

    ``task`` needs ``probe_truth(prompt)`` and ``stance(prompt, response)``; a prompt may be a string
    or a record with a "prompt" field.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    n_true = n_false = syco = contra = right = 0
    for p, r in zip(prompts, responses):
        prompt = p["prompt"] if isinstance(p, dict) else p
        truth = task.probe_truth(prompt)
        if truth is None:
            continue
        stance = task.stance(prompt, r)
        if truth:
            n_true += 1
            contra += stance == "disagree"
            right += stance == "agree"
        else:
            n_false += 1
            syco += stance == "agree"
            right += stance == "disagree"
    return {"sycophancy_rate": syco / n_false if n_false else NAN,
            "contrarian_rate": contra / n_true if n_true else NAN,
            "probe_accuracy": right / (n_true + n_false) if n_true + n_false else NAN,
            "n_false": n_false, "n_true": n_true}


# ----------------------------------------------------------------------------- calibration, agreement
def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """ECE of probabilities that the label is 1 (Naeini et al. 2015; Guo et al. 2017).

    Bins are equal-width on [0, 1] (p = 1.0 falls in the last bin); ECE = Σ_b (|B_b| / N) ·
    |mean label in B_b − mean prob in B_b|. A label may be soft (in [0, 1]: the probability that the
    outcome is 1). For a preference pair use :func:`pairwise_ece`: pairs are stored chosen-first, so
    here every label would be 1 and a well-calibrated model would score far from 0. NaN for no data.
    """
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not probs:
        return NAN
    bins: list[list[tuple[float, float]]] = [[] for _ in range(n_bins)]
    for p, y in zip(probs, labels):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability out of [0, 1]: {p}")
        if not 0.0 <= float(y) <= 1.0:
            raise ValueError(f"label out of [0, 1]: {y}")
        bins[min(int(p * n_bins), n_bins - 1)].append((p, float(y)))
    total = len(probs)
    ece = 0.0
    for b in bins:
        if b:
            conf = sum(p for p, _ in b) / len(b)
            acc = sum(y for _, y in b) / len(b)
            ece += len(b) / total * abs(acc - conf)
    return ece


def sigmoid(x: float) -> float:
    """σ(x) = 1 / (1 + e^−x), without overflow for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def pairwise_ece(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """ECE of pairwise preference probabilities, each pair counted in both orders.

    ``probs[i]`` = the model's P(first ≻ second) for pair i, e.g. σ(r_chosen − r_rejected);
    ``labels[i]`` = 1 if the first was preferred, 0 if the second was, or a soft label in [0, 1]
    (``label_prob``: e.g. the share of annotators who preferred the first). Which response is "first"
    is an accident of storage (chosen-first), so the pair is also counted as (1 − p, 1 − y) and the
    ECE of :func:`expected_calibration_error` is taken over the 2N entries. With an even number of
    equal-width bins (the default 10), whose edges are symmetric about 0.5, this equals (but for a p
    falling exactly on an edge) binning the confidence max(p, 1 − p) against how often the response
    it favours was preferred: the ECE of Guo et al. 2017 (§2), which bins the predicted class's
    probability against accuracy. Without the symmetrisation every hard label of a chosen-first set
    is 1 and ECE collapses to 1 − mean p, far from 0 for a perfectly calibrated model. NaN for no data.
    """
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    both_probs = [float(p) for p in probs] + [1.0 - float(p) for p in probs]
    both_labels = [float(y) for y in labels] + [1.0 - float(y) for y in labels]
    return expected_calibration_error(both_probs, both_labels, n_bins)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pairwise_nll(margins: Sequence[float], labels: Sequence[float], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of (soft) pairwise labels under P(first ≻ second) = σ(margin / T):
    −mean[y · log σ(m / T) + (1 − y) · log σ(−m / T)]. NaN for no data."""
    if len(margins) != len(labels):
        raise ValueError(f"{len(margins)} margins but {len(labels)} labels")
    if not margins:
        return NAN
    total = 0.0
    for m, y in zip(margins, labels):
        z = float(m) / temperature
        total -= float(y) * _log_sigmoid(z) + (1.0 - float(y)) * _log_sigmoid(-z)
    return total / len(margins)


def fit_temperature(margins: Sequence[float], labels: Sequence[float], *, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-6) -> float:
    """Temperature scaling of a pairwise margin (Guo et al. 2017, §4.2; for two classes it is Platt
    scaling without a bias): the T > 0 that minimises :func:`pairwise_nll` of σ(margin / T) on
    held-out pairs.

    ``margins[i]`` = r_first − r_second, ``labels[i]`` as in :func:`pairwise_ece` (soft labels allowed).
    The NLL is convex in 1/T (a logistic loss of the single weight 1/T), hence unimodal in log T, so
    a golden-section search on log T over ``bounds`` finds the minimum to a relative precision of
    ``tol``. It stops at a bound when the optimum lies outside (e.g. T → 0 when the labels are
    perfectly separated by the margins). Returns 1.0 when there is no data or every margin is 0 (T
    does not change σ(0)). The ranking of responses, and so accuracy, does not depend on T.
    """
    if len(margins) != len(labels):
        raise ValueError(f"{len(margins)} margins but {len(labels)} labels")
    low, high = bounds
    if not 0.0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    if not margins or all(float(m) == 0.0 for m in margins):
        return 1.0
    margins, labels = [float(m) for m in margins], [float(y) for y in labels]

    def loss(log_t: float) -> float:
        return pairwise_nll(margins, labels, math.exp(log_t))

    golden = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
    a, b = math.log(low), math.log(high)
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = loss(c)
        else:  # the minimum lies in [c, b]
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2.0)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN with fewer than two points or zero variance."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    n = len(x)
    if n < 2:
        return NAN
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return NAN
    return sxy / math.sqrt(sxx * syy)


def agreement_rate(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> float:
    """Fraction of items where two label sequences are equal (e.g. two annotators, or RM vs gold)."""
    if len(labels_a) != len(labels_b):
        raise ValueError(f"{len(labels_a)} labels vs {len(labels_b)}")
    return sum(a == b for a, b in zip(labels_a, labels_b)) / len(labels_a) if labels_a else NAN


# ----------------------------------------------------------------------------- policy evaluation (rlhfkit eval)
def per_prompt_means(values_by_prompt: Sequence[Sequence[float]]) -> list[float]:
    """Each prompt's mean over its samples: the independent units a bootstrap over prompts resamples.
    A prompt with no value is an error (it would silently drop out of the mean)."""
    out = []
    for i, values in enumerate(values_by_prompt):
        if not values:
            raise ValueError(f"prompt {i} has no value")
        out.append(sum(float(v) for v in values) / len(values))
    return out


def mean_self_bleu_by_prompt(responses_by_prompt: Sequence[Sequence[str]], n: int = 4) -> float:
    """Mean over prompts of :func:`self_bleu` among one prompt's samples: how alike a policy's answers
    to the SAME prompt are (pooling across prompts would mostly measure that prompts differ). Prompts
    with fewer than two non-empty samples are left out; NaN when none is left."""
    scores = [s for s in (self_bleu(rs, n) for rs in responses_by_prompt) if not math.isnan(s)]
    return sum(scores) / len(scores) if scores else NAN


def mean_token_entropy(entropy_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Mean next-token entropy per sampled token, Σ_samples Σ_t H_t / Σ_samples T (each token weighs
    the same, so a long sample counts more than a short one). NaN when no token was sampled."""
    if len(entropy_sums) != len(token_counts):
        raise ValueError(f"{len(entropy_sums)} entropy sums but {len(token_counts)} token counts")
    total = sum(token_counts)
    return sum(float(h) for h in entropy_sums) / total if total else NAN


def outcome_of_probability(prob: float) -> float:
    """A judge's P(policy better) as a win-rate outcome: 1 above ½, 0 below, a tie (½) at exactly ½."""
    return 1.0 if prob > 0.5 else 0.5 if prob == 0.5 else 0.0


def scored_comparisons(scores_a: Sequence[Sequence[float]], scores_b: Sequence[Sequence[float]],
                       lengths_a: Sequence[Sequence[float]], lengths_b: Sequence[Sequence[float]]
                       ) -> list[list[tuple[float, float]]]:
    """Per prompt, (Δlen, outcome) of every (a, b) pair of its samples, as :func:`win_rate_by_prompt`
    compares them (a-major order): Δlen = len(a) − len(b), outcome 1 / ½ / 0 as a's score is above,
    equal to or below b's. The per-comparison rows the length-controlled fit needs."""
    if not len(scores_a) == len(scores_b) == len(lengths_a) == len(lengths_b):
        raise ValueError("scores and lengths must cover the same prompts")
    out = []
    for sa, sb, la, lb in zip(scores_a, scores_b, lengths_a, lengths_b):
        if len(sa) != len(la) or len(sb) != len(lb):
            raise ValueError("one length per score")
        out.append([(float(x) - float(y), _outcome(a, b)) for a, x in zip(sa, la) for b, y in zip(sb, lb)])
    return out
