"""AE-Adapt-V (DC-VideoGen Sec. 3.3): move a pre-trained Wan model into the DC-AE-V latent space.

config -> data (cache of both autoencoders' latents + text) -> model (the adapted transformer) ->
align (stage 1a, Eq. 2) -> train (stages 1a, 1b, 2 on the shared training engine) -> export.
"""
