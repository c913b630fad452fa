"""Training of DC-AE-V: data, losses, discriminator, checkpointing and the training loop."""
