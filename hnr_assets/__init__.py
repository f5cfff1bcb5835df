"""hnr: a Dagster asset platform for the study "Don't Retrieve, Generate" (arXiv 2504.21015)."""

__version__ = "0.1.0"
