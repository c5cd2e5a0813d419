"""The Hugging Face Hub: transport, masks and deltas on the Hub, and resolving any REF."""
