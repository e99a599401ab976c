"""Benchmarks that print JSON figures measured on this machine (never asserted on in tests)."""

from .attention import attention_benchmark, fit_exponent
from .speed import SpeedProtocol, peak_rss_mb, run_protocol, speed_benchmark, time_median

__all__ = [
    "SpeedProtocol",
    "attention_benchmark",
    "fit_exponent",
    "peak_rss_mb",
    "run_protocol",
    "speed_benchmark",
    "time_median",
]
