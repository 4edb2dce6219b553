"""Gradient-masking checks: structured verdicts that run with every evaluation.

A robustness number is only as good as the attack behind it; these checks look for the
signs that it was not (REFERENCES.md, "Checks that make a robustness number honest").
"""
from .suite import CHECKS, CheckConfig, Probe, Verdict, run

__all__ = ["CHECKS", "CheckConfig", "Probe", "Verdict", "run"]
