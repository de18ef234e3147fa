"""Example programs using jax_bigsoftmax: a word-level LM trainer and a text VAE."""
