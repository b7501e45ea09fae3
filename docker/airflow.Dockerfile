# Airflow for alignflow: api-server, scheduler, dag-processor and workers. Airflow, its
# providers and the DAG only: Airflow's constraints clash with the ML stack, which lives in
# the stage image (docker/stage.Dockerfile) that the docker/kubernetes backends run.
#
#   docker build -f docker/airflow.Dockerfile -t alignflow-airflow:0.1.0 .
#
# alignflow itself is installed without dependencies: the DAG imports only its config
# (pydantic, PyYAML: in Airflow already) and orchestration modules, plus MLflow's client
# (mlflow-skinny) for the parent run that the start/end tasks open and close.

ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION=3.3.2

# Pinning apache-airflow keeps pip from up- or downgrading the image's own Airflow.
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-standard==1.21.0" \
        "apache-airflow-providers-docker==4.6.1" \
        "apache-airflow-providers-cncf-kubernetes==10.25.0" \
        "mlflow-skinny==3.17.2"

COPY --chown=50000:0 pyproject.toml README.md /opt/alignflow/
COPY --chown=50000:0 src /opt/alignflow/src
RUN pip install --no-cache-dir --no-deps /opt/alignflow

# The DAG builds its tasks from dvc.yaml and reads params.yaml (orchestration section) at
# parse time. Mount a checkout over /opt/alignflow/project to use its params instead.
COPY --chown=50000:0 dvc.yaml params.yaml /opt/alignflow/project/
COPY --chown=50000:0 dags/alignflow_retrain.py /opt/airflow/dags/
ENV ALIGNFLOW_PROJECT_DIR=/opt/alignflow/project

# The official image's airflow user.
USER 50000
