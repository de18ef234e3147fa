"""Word-level LSTM language model trained with Flax NNX and a jax_bigsoftmax.nnx head."""
