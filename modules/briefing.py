"""Briefings: an instructor's Markdown, rendered for students without any raw HTML.

Markdown (python-markdown) turns the text into HTML; nh3 (the ammonia sanitizer) then keeps
only the tags and attributes below: raw HTML the author wrote (a <script>, an onclick, a
javascript: link) never reaches the page. Links open in a new tab with rel="noopener
noreferrer nofollow"; images are not allowed (they would load from anywhere).
"""

from __future__ import annotations

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

MAX_BRIEFING_BYTES = 64 * 1024

TAGS = {
    "a", "blockquote", "br", "code", "dd", "del", "dl", "dt", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "kbd", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th",
    "thead", "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title", "target"}, "th": {"align"}, "td": {"align"}}


def render(text: str) -> SafeString:
    """`text` (Markdown) as sanitized HTML, safe to put in a page as it is."""
    html = markdown.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    clean = nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
    return mark_safe(clean)  # noqa: S308 - nh3 removed everything but the tags above
