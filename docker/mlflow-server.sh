#!/bin/sh
# MLflow tracking server of the compose deployment (service `mlflow`): Postgres backend store, artifacts
# served by the server itself from a volume (clients upload through HTTP and need no access to it).
# Credentials come from the environment only; the password is URL-quoted here and handed to MLflow in
# MLFLOW_BACKEND_STORE_URI, not on the command line, so it never shows in the process list.
set -eu

: "${MLFLOW_DB_USER:?MLFLOW_DB_USER is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${MLFLOW_DB:?MLFLOW_DB is not set}"

quoted_password=$(python -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["MLFLOW_DB_PASSWORD"], safe=""))')
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_DB_USER}:${quoted_password}@${MLFLOW_DB_HOST:-postgres}:${MLFLOW_DB_PORT:-5432}/${MLFLOW_DB}"
export MLFLOW_BACKEND_STORE_URI
unset MLFLOW_DB_PASSWORD quoted_password

# One worker and no job execution (DESIGN.md: ~540 MB and ~8 s to start, against ~2.9 GB and 28 s).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec mlflow server \
  --host 0.0.0.0 \
  --port "${MLFLOW_CONTAINER_PORT:-5000}" \
  --workers 1 \
  --serve-artifacts \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DIR:-/mlflow/artifacts}" \
  "$@"
