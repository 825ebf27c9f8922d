"""Markdown for annotators: model output rendered on the server, then sanitised.

markdown-it-py (CommonMark + GFM tables and strikethrough) with raw HTML off, so ``<script>`` or
``<img onerror>`` in a response shows as text. Images are off too (``![alt](url)`` stays a link,
nothing is fetched from the network), and links only keep http(s) and mailto targets. nh3 (the
ammonia sanitiser) then keeps an allowlist of tags and attributes, as a second line of defence
should the renderer ever emit something unexpected. The page's CSP stays as strict as before.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre",
        "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
# no style attributes: the CSP (style-src 'self') would refuse them anyway
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "code": {"class"}}
SCHEMES = {"http", "https", "mailto"}

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]).disable("image")


@lru_cache(maxsize=4096)
def render_markdown(text: str) -> str:
    """Sanitised HTML for one piece of model output (pure; cached, since each item is served many times)."""
    return nh3.clean(_md.render(text), tags=TAGS, attributes=ATTRIBUTES, url_schemes=SCHEMES,
                     link_rel="noopener noreferrer nofollow", strip_comments=True,
                     set_tag_attribute_values={"a": {"target": "_blank"}})  # a click never leaves the item


def render_text(value: str | list[dict]) -> str | list[dict]:
    """A prompt or response: a string, or a conversation (a list of {role, content}) rendered message by message."""
    if isinstance(value, str):
        return render_markdown(value)
    return [{"role": m["role"], "html": render_markdown(m["content"])} for m in value]


def render_assignment(assignment: dict | None) -> dict | None:
    """The assignment with ``html``: its prompt and responses rendered (the raw text stays for the toggle)."""
    if assignment is None:
        return None
    html = {"prompt": render_text(assignment["prompt"]), "responses": [render_text(r) for r in assignment["responses"]]}
    return {**assignment, "html": html}
