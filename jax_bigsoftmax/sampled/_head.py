"""The sampled-softmax and NCE heads: configuration, parameters and pure methods.

Training draws S negatives and computes the sampled softmax (or NCE) loss;
evaluation (``deterministic``), ``nll``, ``log_prob`` and ``predict`` are the
exact softmax over the same ``[V, D]`` matrix. The linen (:mod:`._linen`)
and NNX (:mod:`._nnx`) modules are shells over :class:`SampledSoftmax` and
:class:`NCE`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.heads import LinearHeadMethods, check_sizes, linear_weight_init
from jax_bigsoftmax._core.linear import LinearSoftmax
from jax_bigsoftmax._core.sharding import head_placement
from jax_bigsoftmax.sampled._functional import (_nce_loss_from_rows, _tf_sampled_loss_from_rows,
                                                nce_loss, sampled_softmax_loss)
from jax_bigsoftmax.sampled._vocab_parallel import vocab_parallel_rows_loss

_IGNORE = -100


@dataclasses.dataclass(frozen=True)
class SampledSoftmax(LinearHeadMethods):
  """Configuration of :class:`jax_bigsoftmax.SampledSoftmaxLoss` (its keywords), checked once."""

  num_classes: int
  features: int
  num_sampled: int
  num_true: int = 1
  remove_accidental_hits: bool = True
  ignore_index: int = -100
  dtype: Any = None
  param_dtype: Any = jnp.float32
  weight_init: Any = linear_weight_init
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None

  use_bias = True  # TF's sampled losses always have biases
  # The single-device training loss and the same loss of gathered rows.
  training_loss = staticmethod(sampled_softmax_loss)
  loss_from_rows = staticmethod(_tf_sampled_loss_from_rows)

  def __post_init__(self):
    check_sizes(num_classes=self.num_classes, features=self.features)
    if not 1 <= self.num_sampled < self.num_classes:
      raise ValueError(
          f"num_sampled must be in [1, num_classes) = [1, {self.num_classes}); got"
          f" {self.num_sampled}.")
    if self.num_true < 1:
      raise ValueError(f"num_true must be >= 1; got {self.num_true}.")
    placement = head_placement(self.mesh, self.vocab_axis, self.data_axis)
    object.__setattr__(self, "placement", placement)
    object.__setattr__(self, "ops", LinearSoftmax(placement))

  def labels_T(self, inputs, labels):
    """``[..., num_true]`` labels (``[...]`` accepted when T = 1), shape-checked."""
    lead = tuple(jnp.shape(inputs)[:-1])
    shape = tuple(jnp.shape(labels))
    if self.num_true == 1 and shape == lead:
      return _checks.as_index(labels)[..., None]
    if shape != lead + (self.num_true,):
      raise ValueError(
          f"labels must have shape {lead + (self.num_true,)} ([..., num_true])"
          + (f" or {lead}" if self.num_true == 1 else "") + f"; got {shape}.")
    return _checks.as_index(labels)

  def loss(self, params, inputs, labels, *, deterministic: bool, key=None):
    """Per-example loss ``[...]``: sampled with ``key`` in training, exact when deterministic.

    A position whose labels all equal ``ignore_index`` gives 0 with no gradient.
    """
    x, w, b = self.cast(params, inputs)
    labels_T = self.labels_T(x, labels)
    _checks.check_integer("labels", labels_T)
    _checks.check_ignore_index(self.ignore_index, labels_T)
    ignored = jnp.all(labels_T == self.ignore_index, axis=-1)
    labels_T = jnp.where(ignored[..., None], 0, labels_T)
    # Every true column (not only the first) is checked, on both paths.
    _checks.check_labels_in_range(labels_T, self.num_classes, name="labels")
    if deterministic:
      loss = self.exact_loss(x, w, b, labels_T)
    elif self.placement is None:
      loss = self.training_loss(w, b, labels_T, x, self.num_sampled, self.num_classes,
                                self.num_true, None, self.remove_accidental_hits, key=key)
    else:
      loss = vocab_parallel_rows_loss(
          self.loss_from_rows, w, b, labels_T, x, self.num_sampled, self.num_classes,
          self.num_true, None, self.remove_accidental_hits, placement=self.placement, key=key)
    return jnp.where(ignored, jnp.zeros((), loss.dtype), loss)

  def exact_loss(self, x, w, b, labels_T):
    """``-(1/T) sum_t log p(y_t)`` ``[...]``: ``lse - mean_t z_t``."""
    nll0 = self.ops.cross_entropy(x, w, b, labels_T[..., 0], ignore_index=_IGNORE)
    if self.num_true == 1:
      return nll0
    if self.placement is not None:  # no device holds the rows: one pass per true label
      total = nll0
      for t in range(1, self.num_true):
        total = total + self.ops.cross_entropy(x, w, b, labels_T[..., t], ignore_index=_IGNORE)
      return total / self.num_true
    acc = _checks.compute_dtype(x, w)
    lab = jnp.clip(labels_T, 0, self.num_classes - 1)
    z = jnp.einsum("...d,...td->...t", x, jnp.take(w, lab, axis=0),
                   preferred_element_type=acc) + jnp.take(b, lab).astype(acc)
    lse = nll0.astype(acc) + z[..., 0]
    bad = jnp.any((labels_T < 0) | (labels_T >= self.num_classes), axis=-1)
    return jnp.where(bad, jnp.nan, lse - jnp.mean(z, axis=-1))


@dataclasses.dataclass(frozen=True)
class NCE(SampledSoftmax):
  """Configuration of :class:`jax_bigsoftmax.NCELoss`: the sampled head with NCE in training."""

  remove_accidental_hits: bool = False  # TF's nce_loss default
  training_loss = staticmethod(nce_loss)
  loss_from_rows = staticmethod(_nce_loss_from_rows)
