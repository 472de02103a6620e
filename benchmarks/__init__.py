"""Measurement scripts; each runs alone as ``python -m benchmarks.<name>`` from the repository root.

Results (CSV, PNG and a JSON of the environment) go to ``benchmarks/results/``; the write-up with
the measured tables and the exact commands is ``docs/benchmarks.md``.
"""
