"""Dagster-free IR code: BEIR I/O and validation, mining, prompts and parsing, training, metrics."""
