"""Evaluation: alignment metrics, over-optimization diagnostics, report, promotion gate."""
