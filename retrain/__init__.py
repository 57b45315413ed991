"""Retraining: dataset snapshots from feedback, TRL + PEFT training runs and their scheduler."""
