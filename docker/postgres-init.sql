-- One PostgreSQL for the compose stack, a database per service (owner: POSTGRES_USER).
CREATE DATABASE mlflow;
CREATE DATABASE airflow;
