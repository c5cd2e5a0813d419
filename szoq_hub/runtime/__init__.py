"""What is tuned: the quantized sparse model, the dense trainable, ZO optimizers and the delta artifact."""
