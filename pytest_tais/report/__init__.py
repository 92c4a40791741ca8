"""The report stage: report.json (versioned), and the terminal table."""

from .json_report import REPORT_SCHEMA, REPORT_VERSION, build_report, write_report
from .table import format_table

__all__ = ["REPORT_SCHEMA", "REPORT_VERSION", "build_report", "write_report", "format_table"]
