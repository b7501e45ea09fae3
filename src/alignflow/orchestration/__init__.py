"""Orchestration: the Airflow DAG (dags/alignflow_retrain.py) built from dvc.yaml.

dvc_graph        dvc.yaml -> stages and their dependencies (pure: no DVC, no Airflow)
schedule         time-based and data-aware (Asset) schedules from params
operators        one operator per stage for the local / docker / kubernetes backend
docker_operator  DockerOperator that passes the worker's credentials through at run time
run_tracking     the MLflow parent run of a DAG run; the failure callback
local_airflow    `make airflow` / `make airflow-test`: a local Airflow (AIRFLOW_HOME=.airflow)
"""
