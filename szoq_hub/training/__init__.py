"""Jobs over a model: fine-tuning, evaluation, merging, and run tracking."""
