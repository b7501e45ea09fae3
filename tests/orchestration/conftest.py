"""Airflow reads its config when first imported: point it at a scratch AIRFLOW_HOME before
any test here imports it (never ~/airflow), without example DAGs."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="alignflow-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
