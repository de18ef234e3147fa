"""Word-level language models: an LSTM and a small decoder-only Transformer.

Each backbone maps tokens ``[B, T]`` to features ``[B, T, hidden_dim]``; the
output layer is a jax_bigsoftmax head built from the config (see
``examples/heads.py``), so the same model trains with any of them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jax_bigsoftmax as jbs
from examples import heads


class LSTMBackbone(nn.Module):
  """Embedding, ``num_layers`` LSTM layers, dropout between them."""
  vocab_size: int
  emb_dim: int
  hidden_dim: int
  num_layers: int
  dropout_rate: float

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.emb_dim, name="embed")(tokens_BxT)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim), name=f"lstm_{i}")(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x


class TransformerBlock(nn.Module):
  """Pre-LayerNorm causal self-attention block."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dropout_rate=self.dropout_rate,
        deterministic=not train)(y, y, mask=mask)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.mlp_dim)(y)
    y = nn.gelu(y)
    y = nn.Dense(x.shape[-1])(y)
    return x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class TransformerBackbone(nn.Module):
  """Token + learned position embeddings, causal blocks, final LayerNorm and projection."""
  vocab_size: int
  emb_dim: int
  hidden_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout_rate: float

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, *, train: bool) -> jax.Array:
    t = tokens_BxT.shape[-1]
    if t > self.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
    x = nn.Embed(self.vocab_size, self.emb_dim, name="embed")(tokens_BxT)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.emb_dim))
    x = x + pos[None, :t]
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mask = nn.make_causal_mask(tokens_BxT)
    for i in range(self.num_layers):
      x = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                           name=f"block_{i}")(x, mask, train=train)
    x = nn.LayerNorm()(x)
    return nn.Dense(self.hidden_dim, name="out_proj")(x)


class LanguageModel(nn.Module):
  """A backbone followed by a swappable jax_bigsoftmax head.

  Attributes:
    config: the experiment config (``model``, sizes, head options).
    head_spec: the head to build (``examples.heads.HeadSpec``).
  """
  config: Any
  head_spec: heads.HeadSpec

  def setup(self):
    c = self.config
    if c.model == "lstm":
      self.backbone = LSTMBackbone(self.head_spec.num_classes, c.emb_dim, c.hidden_dim,
                                   c.num_layers, c.dropout_rate)
    else:
      self.backbone = TransformerBackbone(
          self.head_spec.num_classes, c.emb_dim, c.hidden_dim, c.num_layers,
          c.num_heads, c.mlp_dim, c.seq_len, c.dropout_rate)
    if c.tie_embeddings:
      # Tied output layer: the input embedding table [V, D] is the full softmax's weight.
      self.tied_bias = self.param("tied_bias", nn.initializers.zeros,
                                  (self.head_spec.num_classes,))
    else:
      self.head = heads.Head(self.head_spec)

  def _tied(self):
    return self.backbone.variables["params"]["embed"]["embedding"], self.tied_bias

  def __call__(self, tokens_BxT: jax.Array, labels_BxT: jax.Array, *, train: bool) -> jax.Array:
    """Per-token NLL ``[B, T]`` (the sampled-softmax training loss when ``train`` for that head)."""
    x = self.backbone(tokens_BxT, train=train)
    if self.config.tie_embeddings:
      w, b = self._tied()
      return jbs.linear_cross_entropy(x, w, labels_BxT, b, reduction="none")
    return self.head.nll(x, labels_BxT, train=train)

  def log_prob(self, tokens_BxT: jax.Array) -> jax.Array:
    """Exact ``[B, T, V]`` next-token log-probabilities."""
    x = self.backbone(tokens_BxT, train=False)
    if self.config.tie_embeddings:
      w, b = self._tied()
      return jax.nn.log_softmax(x @ w.T + b.reshape((1,) * (x.ndim - 1) + (-1,)), axis=-1)
    return self.head.log_prob(x)

  def predict(self, tokens_BxT: jax.Array) -> jax.Array:
    """Arg-max next token ``[B, T]``."""
    x = self.backbone(tokens_BxT, train=False)
    if self.config.tie_embeddings:
      return jbs.linear_argmax(x, *self._tied())
    return self.head.predict(x)


def init_params(model: LanguageModel, rng: jax.Array, batch_size: int, seq_len: int):
  tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
  rngs = {"params": rng, "dropout": rng, "sampler": rng}
  return model.init(rngs, tokens, tokens, train=False)["params"]
