"""Report of a results folder: Markdown summary (Tables II-IV layout) and figures."""

from .summary import (
    METRICS,
    SUMMARY_CSV,
    SUMMARY_MD,
    ReportLayout,
    aggregate,
    build_summary,
    dataset_sizes,
    matching_runs,
    recorded_command,
    write_report,
)

__all__ = [
    "METRICS",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "ReportLayout",
    "aggregate",
    "build_summary",
    "dataset_sizes",
    "matching_runs",
    "recorded_command",
    "write_report",
]
