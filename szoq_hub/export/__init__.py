"""Outside formats: PEFT adapters and plots."""
