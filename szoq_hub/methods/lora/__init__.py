"""The lora training method."""
