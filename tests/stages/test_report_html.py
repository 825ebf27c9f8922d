"""report.html of the quick demo: self-contained, every image a PNG, every image loads in Chromium;
the limitations step's keys in summary.json."""

import base64
import json
import re

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def _images(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)


@pytest.mark.slow
def test_report_html_is_self_contained_and_its_images_are_pngs(quick_demo):
    html = (quick_demo / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<h2>Methods</h2>" in html
    # nothing fetched from elsewhere: no remote src/href, no scripts or stylesheets by URL
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    srcs = _images(html)
    # the quick demo runs every method, so every figure is there (a missing one would be a sentence)
    assert len(srcs) == 7, len(srcs)  # curves, over-optimisation, reliability, win rate, KL, sycophancy, labels
    for src in srcs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True).startswith(PNG)


@pytest.mark.slow
def test_summary_has_the_limitations(quick_demo):
    summary = json.loads((quick_demo / "summary.json").read_text())
    lim = summary["limitations"]
    assert {"overoptimization", "labelling_cost", "annotators", "reliability", "training_curves"} <= set(lim)
    assert set(lim["training_curves"]) == {"ppo", "ppo_no_kl", "grpo", "rloo"}
    bon = lim["overoptimization"]["best_of_n"]
    assert [r["n"] for r in bon["rows"]] == [1, 2, 4, 8, 16] and bon["rows"][0]["gold_gain"] == 0.0
    ann = lim["annotators"]
    assert set(ann["per_annotator"]) == {"careful", "friendly", "agreeable", "verbose", "hasty"}
    assert -1.0 <= ann["krippendorff_alpha"] <= 1.0
    lc = lim["labelling_cost"]
    assert lc["curves"]["random"][-1]["labels"] == lc["pool"] == lc["curves"]["active"][-1]["labels"]
    # the reliability bins are pairwise_ece's: their weighted gap is the step's ECE
    bins, total = lim["reliability"]["bins"], sum(b["count"] for b in lim["reliability"]["bins"])
    assert total == 2 * lim["reliability"]["pairs"]
    assert sum(b["count"] / total * abs(b["frequency"] - b["confidence"]) for b in bins) == pytest.approx(
        lim["reliability"]["ece"], abs=1e-12)
    assert summary["timings_s"]["limitations"] < 30  # a few seconds on the quick demo


@pytest.mark.slow
@pytest.mark.browser
def test_every_image_loads_in_chromium(quick_demo, chromium_browser):
    page = chromium_browser.new_page()
    remote = []
    page.on("request", lambda r: r.url.startswith(("file:", "data:")) or remote.append(r.url))
    page.goto((quick_demo / "report.html").as_uri())
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 7 and all(w > 0 for w in widths), widths
    assert remote == []


@pytest.mark.slow
def test_limitations_are_cached_in_the_run_folder(quick_demo):
    from rlhfkit.demo.context import make_context
    from rlhfkit.demo.steps import limitations

    cached = quick_demo / "limitations" / "limitations.json"
    before = cached.stat().st_mtime_ns
    again = limitations.run(make_context(quick_demo))  # nothing it reads changed: the file is reused, not rewritten
    assert cached.stat().st_mtime_ns == before
    assert again == json.loads((quick_demo / "summary.json").read_text())["limitations"]
