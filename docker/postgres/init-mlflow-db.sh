#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): the Dagster
# database is POSTGRES_DB; MLflow gets its own database, MLFLOW_DB, owned by the same user.
set -eu
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v db="$MLFLOW_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
