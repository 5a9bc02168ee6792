"""A record's notebook as safe, self-contained HTML: the allow-list sanitizer and the nbconvert exporter.

A notebook's markdown and outputs are whatever its cells printed, so they are cleaned before a reviewer's
browser sees them: scripts, event handlers, ``<style>``, iframes and ``javascript:`` URLs go, while the
headings, paragraphs and tables notebooks and pandas produce stay. The page loads nothing from a network.
"""

from __future__ import annotations

import re
from typing import Any

import nbformat

from dbrunbook.views.report_style import PAGE_CSS

# nbconvert's own clean_html (what --sanitize-html uses) allows so few tags that it escapes headings,
# paragraphs and table headers into visible markup (jupyter/nbconvert#2016). This allow-list keeps what
# notebooks and pandas produce; scripts, event handlers, <style>, iframes and javascript: URLs still go.
_ALLOWED_TAGS = frozenset({
    "a", "abbr", "acronym", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
    "details", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "ol", "p", "pre", "s", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "tt", "u", "ul",
})


_GLOBAL_ATTRIBUTES = frozenset({"class", "id", "title", "style", "align", "valign"})


_TAG_ATTRIBUTES = {
    "a": {"href"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"}, "table": {"border"}, "ol": {"start"},
}


_DROPPED_WITH_CONTENT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name in _GLOBAL_ATTRIBUTES or name in _TAG_ATTRIBUTES.get(tag, ()):
        if tag == "img" and name == "src":
            return bool(_IMAGE_DATA.match(value))  # only embedded raster images: nothing fetched, no SVG
        if tag == "a" and name == "href":
            return not value.strip().lower().startswith("data:")
        return True
    return False


def _css_sanitizer() -> Any:
    """bleach's CSS sanitizer allowing its default properties; None without tinycss2 (bleach's optional extra)."""
    try:
        from bleach.css_sanitizer import ALLOWED_CSS_PROPERTIES, CSSSanitizer
    except ImportError:
        return None
    return CSSSanitizer(allowed_css_properties=ALLOWED_CSS_PROPERTIES)


def sanitize_html(text: str | bytes) -> str:
    """Clean HTML from a notebook (markdown or an output) for display in the archive.

    bleach with an allow-list of tags and attributes, CSS through bleach's CSS sanitizer with its default
    property list (what nbconvert's own sanitizer uses); ``<script>`` and ``<style>`` elements are removed
    with their content rather than shown as text.
    """
    import bleach

    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    kwargs = {}
    css_sanitizer = _css_sanitizer()
    if css_sanitizer is not None:
        kwargs["css_sanitizer"] = css_sanitizer
    return bleach.clean(_DROPPED_WITH_CONTENT.sub("", text), tags=_ALLOWED_TAGS,
                        attributes=_allowed_attribute, protocols={"http", "https", "mailto", "data"},
                        strip=True, **kwargs)


class NotebookRenderer:
    """nbconvert's HTMLExporter (lab template, sanitized), with our header and no external script."""

    def __init__(self) -> None:
        import jinja2
        from nbconvert import HTMLExporter

        template = (
            "{%- extends 'lab/index.html.j2' -%}\n"
            # No require.js, MathJax or mermaid from a CDN: the archive is read offline.
            "{% block html_head_js %}{% endblock html_head_js %}\n"
            "{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}\n"
            "{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}\n"
            "{% block jupyter_widgets %}{% endblock jupyter_widgets %}\n"
            "{% block extra_css %}<style>" + PAGE_CSS + "</style>{% endblock extra_css %}\n"
            "{% block body_header %}{{ super() }}{{ resources.dbrunbook_header }}{% endblock body_header %}\n"
        )
        self.exporter = HTMLExporter(
            template_name="lab",
            sanitize_html=True,
            extra_loaders=[jinja2.DictLoader({"dbrunbook_record.html.j2": template})],
            template_file="dbrunbook_record.html.j2",
            filters={"clean_html": sanitize_html},
        )

    def render(self, nb: nbformat.NotebookNode, header: str, title: str) -> str:
        resources = {"dbrunbook_header": header, "metadata": {"name": title}}
        body, _ = self.exporter.from_notebook_node(nb, resources=resources)
        return body
