"""The LSTM language model of ``examples/lm`` written with Flax NNX.

The output layer is a ``jax_bigsoftmax.nnx`` head chosen by the same config
fields and :class:`examples.heads.HeadSpec` as the linen trainer, so the two
trainers read one config file.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from examples import heads
from jax_bigsoftmax import nnx as jnnx


def make_head(spec: heads.HeadSpec, *, rngs: nnx.Rngs) -> nnx.Module:
  """The ``jax_bigsoftmax.nnx`` head of ``spec`` (the NNX twin of ``heads.Head``'s choice)."""
  if spec.kind == "full":
    return jnnx.FullSoftmaxLoss(spec.num_classes, spec.features, rngs=rngs)
  if spec.kind == "adaptive":
    return jnnx.AdaptiveLogSoftmaxWithLoss(spec.features, spec.num_classes, spec.cutoffs,
                                           div_value=spec.div_value, rngs=rngs)
  if spec.kind == "hsigmoid":
    custom = spec.tree == "huffman"  # a Huffman tree has V-1 internal nodes
    return jnnx.HSigmoidLoss(spec.features, spec.num_classes - 1 if custom else spec.num_classes,
                             is_custom=custom, rngs=rngs)
  # Built without a "sampler" stream: the trainer passes a key per step.
  return jnnx.SampledSoftmaxLoss(spec.num_classes, spec.features, spec.num_sampled, rngs=rngs)


class LanguageModel(nnx.Module):
  """Embedding, ``num_layers`` LSTM layers with dropout, and a jax_bigsoftmax NNX head."""

  def __init__(self, config, spec: heads.HeadSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    self.num_layers = config.num_layers
    self.embed = nnx.Embed(spec.num_classes, config.emb_dim, rngs=rngs)
    for i in range(config.num_layers):
      cell = nnx.OptimizedLSTMCell(config.emb_dim if i == 0 else config.hidden_dim,
                                   config.hidden_dim, rngs=rngs)
      setattr(self, f"lstm_{i}", nnx.RNN(cell, rngs=False))
    self.dropout = nnx.Dropout(config.dropout_rate)
    self.head = make_head(spec, rngs=rngs)

  def features(self, tokens_BxT: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """``[B, T, hidden_dim]``; dropout is applied when a ``key`` is given."""
    keys = [None] * (self.num_layers + 1) if key is None else jax.random.split(key, self.num_layers + 1)
    x = self.dropout(self.embed(tokens_BxT), deterministic=key is None, rngs=keys[0])
    for i in range(self.num_layers):
      rnn = getattr(self, f"lstm_{i}")
      zeros = jnp.zeros(tokens_BxT.shape[:1] + (rnn.cell.hidden_features,), x.dtype)
      x = rnn(x, initial_carry=(zeros, zeros))
      x = self.dropout(x, deterministic=key is None, rngs=keys[i + 1])
    return x

  def _tables(self):
    return jnp.asarray(self.spec.path_table.array), jnp.asarray(self.spec.path_code.array)

  def __call__(self, tokens_BxT: jax.Array, targets_BxT: jax.Array, *,
               key: jax.Array | None = None) -> jax.Array:
    """Per-token loss ``[B, T]``: training (``key`` given: dropout, sampled loss) or exact NLL."""
    if key is None:
      x, sampler_key = self.features(tokens_BxT), None
    else:
      dropout_key, sampler_key = jax.random.split(key)
      x = self.features(tokens_BxT, key=dropout_key)
    if self.spec.kind == "sampled" and sampler_key is not None:
      return self.head(x, targets_BxT, rngs=sampler_key)
    if self.spec.kind == "hsigmoid" and self.spec.tree == "huffman":
      table_VxL, code_VxL = self._tables()  # one path per example: gather each label's row
      return self.head.nll(x, targets_BxT, jnp.take(table_VxL, targets_BxT, axis=0),
                           jnp.take(code_VxL, targets_BxT, axis=0))
    return self.head.nll(x, targets_BxT)

  def log_prob(self, tokens_BxT: jax.Array) -> jax.Array:
    """Exact next-token log-probabilities ``[B, T, V]``."""
    x = self.features(tokens_BxT)
    if self.spec.kind == "hsigmoid" and self.spec.tree == "huffman":
      return self.head.log_prob(x, *self._tables())
    return self.head.log_prob(x)
