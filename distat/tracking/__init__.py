"""Experiment tracking: MLflow parent/child runs of a search and the Pareto front of its trials."""
