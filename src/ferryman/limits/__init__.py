"""Admission limits shared by filters and apps: the two-window rate estimator."""

from .rate import Rate, parse_rate

__all__ = ["Rate", "parse_rate"]
