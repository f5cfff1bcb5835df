"""Dagster-free code, one sub-package per stage (data, retrieval, mining, generation, training, evaluation)
and runtime (what every stage runs on); nothing here imports dagster, defs, resources or profiles."""
