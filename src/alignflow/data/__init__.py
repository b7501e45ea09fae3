"""Data stages: sources, cleaning filters, dedup, decontamination, formatting."""
