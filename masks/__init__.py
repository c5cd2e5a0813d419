"""Curated szoq masks shipped with the package (see catalog.json)."""
