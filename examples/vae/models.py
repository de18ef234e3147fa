"""Sentence VAE: LSTM encoder -> Gaussian latent -> LSTM decoder -> jax_bigsoftmax head.

Bowman et al. 2016, "Generating Sentences from a Continuous Space": the
encoder's final state gives ``mu`` and ``log sigma^2`` of ``q(z|x)``; ``z``
initialises the decoder, which reads ``<eos>, w_1, ..., w_n`` (``<eos>`` doubles
as the start symbol; word dropout replaces inputs by ``<unk>``) and predicts
``w_1, ..., w_n, <eos>`` through the configured output layer.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from examples import heads


class TextVAE(nn.Module):
  """Attributes: ``config`` (sizes, word dropout), ``head_spec``, ``eos_id``, ``unk_id``."""
  config: Any
  head_spec: heads.HeadSpec
  eos_id: int
  unk_id: int

  def setup(self):
    c = self.config
    self.embed = nn.Embed(self.head_spec.num_classes, c.emb_dim)
    self.encoder = nn.RNN(nn.OptimizedLSTMCell(c.hidden_dim), return_carry=True)
    self.to_mu = nn.Dense(c.latent_dim)
    self.to_logvar = nn.Dense(c.latent_dim)
    self.to_carry = nn.Dense(2 * c.hidden_dim)
    self.decoder = nn.RNN(nn.OptimizedLSTMCell(c.hidden_dim), return_carry=True)
    self.head = heads.Head(self.head_spec)

  def encode(self, tokens_BxT: jax.Array, lengths_B: jax.Array):
    """``(mu [B, Z], logvar [B, Z])`` of ``q(z | sentence)``."""
    (_, h), _ = self.encoder(self.embed(tokens_BxT), seq_lengths=lengths_B)
    return self.to_mu(h), self.to_logvar(h)

  def _initial_carry(self, z_BxZ):
    c, h = jnp.split(jnp.tanh(self.to_carry(z_BxZ)), 2, axis=-1)
    return c, h

  def decoder_inputs(self, tokens_BxT: jax.Array, *, train: bool):
    """``<eos>`` then the sentence; with ``train``, word dropout to ``<unk>``."""
    b = tokens_BxT.shape[0]
    inputs = jnp.concatenate([jnp.full((b, 1), self.eos_id, tokens_BxT.dtype), tokens_BxT], 1)
    if train and self.config.word_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.config.word_dropout, inputs.shape)
      drop = drop.at[:, 0].set(False)
      inputs = jnp.where(drop, self.unk_id, inputs)
    return inputs

  def __call__(self, tokens_BxT, targets_BxT1, lengths_B, *, train: bool, prior: bool = False):
    """Per-token reconstruction loss ``[B, T+1]`` (unmasked) and KL per latent dimension ``[B, Z]``.

    The latent is sampled (rng ``"latent"``) from ``q(z | sentence)``, in evaluation
    too (a fixed key gives a deterministic ELBO estimate). ``prior=True`` decodes
    from ``z ~ N(0, I)`` instead: the decoder as an unconditional language model,
    the baseline the reconstruction is compared with.
    """
    mu, logvar = self.encode(tokens_BxT, lengths_B)
    eps = jax.random.normal(self.make_rng("latent"), mu.shape, mu.dtype)
    z = eps if prior else mu + jnp.exp(0.5 * logvar) * eps
    kl = 0.5 * (jnp.exp(logvar) + mu**2 - 1.0 - logvar)
    inputs = self.decoder_inputs(tokens_BxT, train=train)
    _, x = self.decoder(self.embed(inputs), initial_carry=self._initial_carry(z))
    return self.head.nll(x, targets_BxT1, train=train), kl

  def sample_step(self, carry, token_B: jax.Array, key: jax.Array):
    """One ancestral step: the next token drawn from the head's ``log_prob``."""
    carry, x = self.decoder(self.embed(token_B[:, None]), initial_carry=carry)
    return carry, jax.random.categorical(key, self.head.log_prob(x[:, 0])).astype(jnp.int32)

  def initial_carry(self, z_BxZ: jax.Array):
    """Decoder LSTM state ``(c, h)`` from the latent."""
    return self._initial_carry(z_BxZ)

  def decode_step(self, carry, token_B: jax.Array):
    """One greedy step: ``(carry, token [B]) -> (carry, arg-max next token [B])``."""
    carry, x = self.decoder(self.embed(token_B[:, None]), initial_carry=carry)
    return carry, self.head.predict(x[:, 0]).astype(jnp.int32)
