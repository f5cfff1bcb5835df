"""Evaluation stage: retrieval metrics, score folders, the results table, significance tests and plots."""
