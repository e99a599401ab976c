"""Benchmarks that print JSON figures measured on this machine (never asserted on in tests)."""

from .speed import SpeedProtocol, peak_rss_mb, run_protocol, speed_benchmark, time_median

__all__ = ["SpeedProtocol", "peak_rss_mb", "run_protocol", "speed_benchmark", "time_median"]
