"""Training methods: one folder per method (sparse, dense, lora)."""
