"""The dense training method."""
