"""The sparse training method."""
