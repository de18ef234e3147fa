"""Word-level language model trainer (LSTM or Transformer + any jax_bigsoftmax head)."""
