"""Renderers of audit results: a self-contained HTML report (plotly figures in a Jinja2
template) and rich tables for the terminal. Renderers return strings or renderables, or
write files atomically; they never print.

May import: errors, runtime, results, auditing.
"""

from __future__ import annotations

from .html import render_compare_html, render_html, write_compare_html, write_html
from .terminal import audit_summary, audit_table, compare_table

__all__ = [
    "render_html",
    "write_html",
    "render_compare_html",
    "write_compare_html",
    "audit_table",
    "audit_summary",
    "compare_table",
]
