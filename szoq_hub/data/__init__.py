"""Checkpoints and models, calibration windows, tasks and option scoring."""
