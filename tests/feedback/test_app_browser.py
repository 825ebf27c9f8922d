"""A real browser (Debian's chromium, driven by Playwright) labels with the keyboard only, and by touch on a phone.

Checks that the export holds exactly the labels given, that model output containing HTML and
<script> shows as text, that markdown is rendered (and the raw text one key away), that nothing
overflows sideways at 390 px and 1280 px, and takes the annotator-page screenshots (written to
docs/img/ for the README and docs/labeling.md only with RLHFKIT_SCREENSHOTS=docs).
"""

import os
import tempfile
from pathlib import Path

import pytest

from rlhfkit.feedback.app import service
from rlhfkit.feedback.app.items import build_items
from rlhfkit.feedback.app.storage import SQLiteStorage
from rlhfkit.feedback.app.testing import running_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN = "admin-token-for-tests-0123456789"
# the README's screenshots are refreshed only on request (RLHFKIT_SCREENSHOTS=docs), so a test run never
# changes a tracked file; otherwise they go to a temporary folder
SCREENSHOT = (Path(__file__).resolve().parents[2] / "docs" / "img" if os.environ.get("RLHFKIT_SCREENSHOTS") == "docs"
              else Path(tempfile.mkdtemp(prefix="rlhfkit-screens-"))) / "annotator.png"
XSS = '<script>alert("xss")</script><img src=x onerror="alert(1)"> and <b>bold</b>'

PAIRS = [
    ("What is 2 + 2?", "4", "Four."),
    ("Name a prime number.", "9", "7"),
    ("Explain to a ten-year-old why the sky is blue.",
     "The sky is blue because it reflects the ocean.",
     "Sunlight is made of all colours. When it passes through the air, tiny gas molecules scatter blue "
     "light much more than red light, so blue light reaches your eyes from every direction in the sky.\n\n"
     "At sunset the light travels through much more air: the blue is scattered away before it reaches "
     "you, and the reds and oranges are left."),
    ("Reply with the HTML you would use for a heading.", XSS, "Use an <h1> element: <h1>Title</h1>"),
    ("asdf qwer", "I am not sure what you mean.", "Could you rephrase?"),
]
MARKDOWN = ("## Steps\n\n1. Measure the **flour**.\n2. Mix it with *water*.\n\n| ingredient | grams |\n|---|---|\n"
            "| flour | 500 |\n| water | 350 |\n\n```python\nrecipe = {'flour': 500, 'water': 350, 'salt': 10, "
            "'yeast': 7, 'time_hours': 12}  # a long line that scrolls inside its block\n```\n"
            "See [the method](javascript:alert(1)) or ![a photo](https://example.com/bread.jpg).")
CHAT = [{"role": "system", "content": "You are a baker."}, {"role": "user", "content": "How do I make bread?"},
        {"role": "assistant", "content": "Do you want a quick bread or a sourdough?"},
        {"role": "user", "content": "A simple *yeasted* loaf, please."}]
GUIDELINES = "Prefer the response that is correct, then helpful, then concise.\nNever reward made-up facts."


PAIR_RECORDS = [{"prompt": p, "responses": [a, b], "gold": None} for p, a, b in PAIRS]
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@pytest.mark.browser
@needs_chromium
def test_keyboard_labeling_export_and_escaping(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store = SQLiteStorage(tmp_path / "fb.sqlite")
    pairwise = store.create_project("helpfulness", mode="pairwise", items=build_items(PAIR_RECORDS, "pairwise"),
                                    strength_scale=3, guidelines=GUIDELINES)
    ranking = store.create_project("ranking", mode="ranking", items=[
        {"prompt": "Rank these greetings.", "responses": ["Hi.", "Hello there!", "Greetings, friend.", "Yo"]}])
    alice = store.add_annotator(pairwise["id"], "alice")
    bob = store.add_annotator(ranking["id"], "bob")["token"]
    problems = []

    with running_server(store, admin_token=ADMIN) as base, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1200, "height": 540})
        page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        prompt, key = page.locator("#prompt-text"), page.keyboard.press

        page.goto(f"{base}/label#token={alice['token']}")
        expect(prompt).to_have_text(PAIRS[0][0])
        expect(page.locator("#counts")).to_have_text("0 done · 0 skipped · 5 left")
        key("t")
        key("Enter")  # a tie

        expect(prompt).to_have_text(PAIRS[1][0])
        key("1")
        key("Enter")  # A, strength 2 (the default)...
        expect(prompt).to_have_text(PAIRS[2][0])
        key("u")  # ...undone: the item comes back with its label filled in; change it to B, strength 1
        expect(prompt).to_have_text(PAIRS[1][0])
        expect(page.locator(".choices button.on")).to_contain_text("A is better")
        key("2")
        key("ArrowDown")
        key("Enter")

        expect(prompt).to_have_text(PAIRS[2][0])
        key("2")
        key("ArrowUp")  # strength 2 -> 3 ("much")
        expect(page.locator(".scale button.on")).to_have_text("much")
        expect(page.locator("#counts")).to_have_text("2 done · 0 skipped · 3 left")
        expect(page.locator("#toast")).not_to_have_class("show")  # let the "Saved" toast fade
        key("Enter")

        expect(prompt).to_have_text(PAIRS[3][0])  # untrusted output shows as text, nothing runs
        expect(page.locator(".response .text").first).to_have_text(XSS)
        assert page.locator("#responses img, #responses b, #responses script").count() == 0
        key("1")
        key("Enter")

        expect(prompt).to_have_text(PAIRS[4][0])
        key("s")
        key("2")  # "The prompt is broken or unclear"
        key("Enter")
        expect(page.locator("#finished")).to_be_visible()
        expect(page.locator("#counts")).to_have_text("4 done · 1 skipped · 0 left")
        key("g")
        expect(page.locator("#guide-text")).to_have_text(GUIDELINES)
        key("Escape")
        expect(page.locator("#guide")).to_be_hidden()

        # a ranking: select C, move it up twice; select D and tie it with the one before it (B)
        page = browser.new_page(viewport={"width": 1200, "height": 420})  # another annotator, another tab
        prompt, key = page.locator("#prompt-text"), page.keyboard.press
        page.goto(f"{base}/label#token={bob}")
        expect(prompt).to_have_text("Rank these greetings.")
        for k in ("3", "ArrowUp", "ArrowUp", "4", "="):
            key(k)
        expect(page.locator(".ranking")).to_have_text("bestC>A>B=Dworst")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT.with_name("ranking.png")))
        key("Enter")
        expect(page.locator("#finished")).to_be_visible()
        browser.close()

    assert problems == []
    exported = service.export(store, pairwise["id"], "pairwise")
    got = [(r["prompt"], r["chosen"], r["label_prob"], r["strength"], r["annotator"]) for r in exported]
    assert got == [
        (PAIRS[0][0], PAIRS[0][1], 0.5, 0.0, ["alice"]),
        (PAIRS[1][0], PAIRS[1][2], 1.0, 1.0, ["alice"]),
        (PAIRS[2][0], PAIRS[2][2], 1.0, 3.0, ["alice"]),
        (PAIRS[3][0], XSS, 1.0, 2.0, ["alice"]),
    ]  # the skipped item is not exported; the undone label is gone
    progress = store.progress(alice)
    assert (progress["done"], progress["skipped"]) == (4, 1)
    (ranked,) = service.export(store, ranking["id"], "ranking")
    assert ranked["ranking"] == [2, 0, [1, 3]] and ranked["annotator"] == ["bob"]


@pytest.mark.browser
@needs_chromium
def test_admin_page_shows_progress_and_links(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store = SQLiteStorage(tmp_path / "fb.sqlite")
    project = store.create_project("helpfulness", mode="pairwise", items=build_items(PAIR_RECORDS, "pairwise"))
    ann = store.add_annotator(project["id"], "<b>eve</b>")
    store.submit(ann, store.next_assignment(ann)["id"], key="k", choice="A")
    with running_server(store, admin_token=ADMIN) as base, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page()
        page.goto(f"{base}/admin#token={ADMIN}")
        expect(page.locator("#annotators tr")).to_have_count(1)
        row = page.locator("#annotators tr td")
        expect(row.nth(0)).to_have_text("<b>eve</b>")  # names are text too
        expect(row.nth(1)).to_have_text("1")
        expect(row.nth(7)).to_have_text(f"{base}/label#token={ann['token']}")
        page.fill("#add-annotator input[name=name]", "frank")
        page.click("#add-annotator button")
        expect(page.locator("#annotators tr")).to_have_count(2)
        browser.close()


def no_sideways_overflow(page):
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.browser
@needs_chromium
def test_markdown_conversations_and_phone_layout(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store = SQLiteStorage(tmp_path / "fb.sqlite")
    long_answer = "Knead it for ten minutes.\n\n" + "\n\n".join(f"Step {i}: wait and fold." for i in range(40))
    project = store.create_project("bread", mode="pairwise", items=[
        {"prompt": CHAT, "responses": [MARKDOWN + "\n\n" + "\n\n".join(f"Note {i}." for i in range(20)), long_answer]},
        {"prompt": "Second item", "responses": ["x", "y"]}], guidelines="Prefer **correct** answers.")
    ann = store.add_annotator(project["id"], "alice")
    problems = []
    with running_server(store, admin_token=ADMIN) as base, sync_playwright() as pw:
        browser = launch(pw)
        desktop = browser.new_page(viewport={"width": 1280, "height": 800})
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                 device_scale_factor=2)
        for page in (desktop, phone):
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.goto(f"{base}/label#token={ann['token']}")
            expect(page.locator("#prompt-text .msg")).to_have_count(4)  # a conversation, one bubble per message
        page = desktop
        expect(page.locator("#prompt-text .msg.role-user")).to_have_count(2)
        first = page.locator(".response .text").first
        expect(first.locator("h2")).to_have_text("Steps")
        expect(first.locator("ol li")).to_have_count(2)
        expect(first.locator("table td").first).to_have_text("flour")
        expect(first.locator("pre code")).to_contain_text("recipe = {")
        assert page.locator("#responses img, #responses script, #responses [href^='javascript']").count() == 0
        assert no_sideways_overflow(page)
        page.screenshot(path=str(SCREENSHOT))
        pre = first.locator("pre")
        assert pre.evaluate("e => getComputedStyle(e).overflowX") == "auto"
        assert pre.evaluate("e => e.scrollWidth > e.clientWidth")  # the long code line scrolls in its block
        # the long response scrolls inside its card; "scroll together" moves the other card too
        second = page.locator(".response .text").nth(1)
        assert second.evaluate("e => e.scrollHeight > e.clientHeight + 100")
        page.click("#btn-together")
        second.evaluate("e => { e.scrollTop = e.scrollHeight; }")
        page.wait_for_function("() => document.querySelectorAll('.response .text')[0].scrollTop > 0")
        page.keyboard.press("r")  # raw text: the markdown as sent
        expect(first).to_contain_text(MARKDOWN)
        expect(page.locator("#btn-raw")).to_have_class("on")
        page.keyboard.press("r")
        expect(first.locator("h2")).to_have_text("Steps")
        assert no_sideways_overflow(page)

        # the phone: the header fits, every action is a button big enough to tap
        page = phone
        expect(page.locator("#counts")).to_have_text("0 done · 0 skipped · 2 left")
        for button in ("#btn-guide", "#btn-undo", "#btn-skip"):
            box = page.locator(button).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] >= 44, (button, box)
        assert no_sideways_overflow(page)
        page.screenshot(path=str(SCREENSHOT.with_name("annotator-phone.png")))
        page.locator(".choices button", has_text="B is better").tap()
        page.locator("#controls button.primary").tap()
        expect(page.locator("#counts")).to_have_text("1 done · 0 skipped · 1 left")
        page.locator("#btn-skip").tap()
        page.locator("#skip-reasons button").first.tap()
        page.locator("#skip-send").tap()
        expect(page.locator("#finished")).to_be_visible()
        page.locator("#btn-guide").tap()
        expect(page.locator("#guide-text strong")).to_have_text("correct")  # guidelines are markdown too
        page.locator("#guide-close").tap()
        expect(page.locator("#guide")).to_be_hidden()
        assert no_sideways_overflow(page)
        browser.close()
    assert problems == []
    (label,) = store.labels(project["id"])
    assert label["ranking"] == [1, 0]
    assert store.progress(ann) == {"done": 1, "skipped": 1, "left": 0}
