"""Scenario tests: what a user does, end to end (the workflows on the smoke profile; the MLflow
UI in a headless Chromium: tests/scenarios/mlflow_ui.py)."""
