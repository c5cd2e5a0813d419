"""Sensitivity masks: scoring, selection, build planning, the artifact, the local registry and the catalog."""
