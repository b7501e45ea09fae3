# MLflow tracking server for the compose stack: PostgreSQL backend store, S3 (MinIO) artifacts.
# The official image lacks the PostgreSQL driver and boto3.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}

RUN pip install --no-cache-dir "psycopg2-binary==2.9.13" "boto3==1.44.5"

USER 1000:1000
EXPOSE 5000
