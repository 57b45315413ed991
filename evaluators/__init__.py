"""Evaluation gates, the model registry and promotion."""
