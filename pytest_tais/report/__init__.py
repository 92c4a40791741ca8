"""The report stage: report.json (versioned), summary.md, report.html, and the terminal table."""

from .html import render_html, write_html
from .json_report import REPORT_SCHEMA, REPORT_VERSION, build_report, write_report
from .markdown import ReportError, render_markdown, write_markdown
from .table import format_table

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "build_report",
    "write_report",
    "format_table",
    "ReportError",
    "render_markdown",
    "write_markdown",
    "render_html",
    "write_html",
]
