"""Text VAE seq2seq with KL annealing (Bowman et al. 2016) and any jax_bigsoftmax head."""
