"""Errors, paths, schema checks, devices and memory: what every layer above uses."""
