"""Reports: self-contained HTML pages with plots, tables and samples."""

from .html import write_report

__all__ = ["write_report"]
