"""Markdown as annotators see it: rendered on the server, then sanitised; hostile input stays inert."""

from html.parser import HTMLParser

from rlhfkit.feedback.app.render import render_assignment, render_markdown

HOSTILE = {
    "raw img": '<img src=x onerror="alert(1)">',
    "script": "<script>alert(document.cookie)</script>",
    "javascript link": "[click me](javascript:alert(1))",
    "upper-case javascript link": "[click me](JAVASCRIPT:alert(1))",
    "entity-encoded javascript link": "[click me](&#106;avascript:alert(1))",
    "data link": "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "raw anchor": '<a href="javascript:alert(1)">hi</a>',
    "html in a code fence": "```html\n<script>alert(1)</script><img src=x onerror=alert(1)>\n```",
    "network image": "![tracking pixel](https://evil.example/pixel.png)",
    "autolink": "<javascript:alert(1)>",
    "iframe and style": "<iframe src=https://evil.example></iframe><style>body{display:none}</style>",
    "event handler in a table": "| a |\n|---|\n| <b onmouseover=alert(1)>x</b> |",
}


def elements(html):
    """(tag, {attribute: value}) of every element a browser would build from ``html``."""
    found = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: found.append((tag, dict(attrs)))
    parser.feed(html)
    return found


def test_hostile_markdown_renders_inert():
    for name, text in HOSTILE.items():
        html = render_markdown(text)
        built = elements(html)
        assert {tag for tag, _ in built} <= {"p", "a", "pre", "code", "table", "thead", "tbody", "tr", "th", "td"}, (
            name, html)
        attributes = {a for _, attrs in built for a in attrs}
        assert attributes <= {"href", "target", "rel", "class"}, (name, html)  # no on* handlers, no src, no style
        hrefs = [attrs["href"] for tag, attrs in built if "href" in attrs]
        assert all(h.startswith(("http://", "https://", "mailto:")) for h in hrefs), (name, hrefs)
    # what each becomes: the markup as visible text, images as plain links, code kept as code
    assert render_markdown(HOSTILE["raw img"]) == '<p>&lt;img src=x onerror="alert(1)"&gt;</p>\n'
    assert render_markdown(HOSTILE["script"]) == "<p>&lt;script&gt;alert(document.cookie)&lt;/script&gt;</p>\n"
    assert render_markdown(HOSTILE["javascript link"]) == "<p>[click me](javascript:alert(1))</p>\n"
    assert render_markdown(HOSTILE["html in a code fence"]) == (
        '<pre><code class="language-html">&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;\n'
        "</code></pre>\n")
    assert render_markdown(HOSTILE["network image"]) == (
        '<p>!<a href="https://evil.example/pixel.png" target="_blank" rel="noopener noreferrer nofollow">'
        "tracking pixel</a></p>\n")


def test_markdown_structure_is_rendered():
    text = ("# Plan\n\nSome *emphasis*, **strong** and `code`.\n\n- one\n- two\n\n3. three\n4. four\n\n"
            "| x | y |\n|:--|--:|\n| 1 | 2 |\n\n```python\nprint('a very long line that must scroll sideways')\n```\n")
    html = render_markdown(text)
    for fragment in ("<h1>Plan</h1>", "<em>emphasis</em>", "<strong>strong</strong>", "<code>code</code>",
                     "<ul>\n<li>one</li>", '<ol start="3">', "<th>x</th>", "<td>2</td>",
                     """<pre><code class="language-python">print('a very long line"""):
        assert fragment in html, (fragment, html)
    assert "style=" not in html  # the CSP refuses inline styles: table alignment is dropped, not sent


def test_conversations_are_rendered_message_by_message():
    chat = [{"role": "user", "content": "Hi *there*"}, {"role": "assistant", "content": "<b>Hello</b>"}]
    rendered = render_assignment({"id": 1, "status": "pending", "prompt": chat, "responses": ["**a**", "b"]})
    assert rendered["prompt"] == chat  # the raw text stays for the raw-text toggle
    assert rendered["html"] == {
        "prompt": [{"role": "user", "html": "<p>Hi <em>there</em></p>\n"},
                   {"role": "assistant", "html": "<p>&lt;b&gt;Hello&lt;/b&gt;</p>\n"}],
        "responses": ["<p><strong>a</strong></p>\n", "<p>b</p>\n"]}
    assert render_assignment(None) is None
