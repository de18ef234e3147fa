"""Flax head for the exact full softmax (the baseline every head is measured against)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks
from jax_bigsoftmax._linear_ce import linear_argmax, linear_cross_entropy

# torch nn.Linear-like fan-in scaling for a [V, D] matrix (fan-in is the last axis).
default_weight_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2)


class FullSoftmaxLoss(nn.Module):
  """Exact softmax output layer over ``num_classes`` words, on ``linear_cross_entropy``.

  The common head interface (shared by every head in this library):
  ``__call__(x, labels)`` the training loss, ``nll(x, labels) -> [...]`` the
  per-token negative log-likelihood (0 at ``ignore_index``),
  ``log_prob(x) -> [..., V]`` and ``predict(x) -> [...]``.

  Params: ``weight`` ``[num_classes, features]`` (torch ``nn.Linear`` layout),
  ``bias`` ``[num_classes]``.

  Attributes:
    num_classes: vocabulary size V.
    features: input feature size D.
    use_bias: whether to learn a bias.
    ignore_index: label value that contributes 0 and is left out of the mean.
    label_smoothing: smoothing used by ``__call__`` (``nll`` is always exact).
    reduction: reduction used by ``__call__``.
    chunk_size: vocabulary chunk for ``linear_cross_entropy`` (None: automatic).
    dtype: computation dtype for the matmuls (None: ``jnp.result_type`` of the
      inputs and the params, as ``flax.linen.Dense``: params are never cast
      down to the inputs' dtype, integer inputs are promoted to float);
      log-sum-exp is always accumulated in float32 or wider.
    param_dtype: dtype of the parameters.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jbs.FullSoftmaxLoss(num_classes=10, features=4)
    >>> x, y = jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    >>> params = head.init(jax.random.key(0), x, y)
    >>> head.apply(params, x, y, method=head.nll).shape
    (2, 3)
  """

  num_classes: int
  features: int
  use_bias: bool = True
  ignore_index: int = -100
  label_smoothing: float = 0.0
  reduction: str = "mean"
  chunk_size: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  weight_init: Any = default_weight_init

  def setup(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
    if self.features < 1:
      raise ValueError(f"features must be >= 1; got {self.features}.")
    self.weight = self.param("weight", self.weight_init, (self.num_classes, self.features),
                             self.param_dtype)
    self.bias = (self.param("bias", nn.initializers.zeros, (self.num_classes,), self.param_dtype)
                 if self.use_bias else None)

  def _cast(self, x):
    return _checks.promote_head_operands(x, self.weight, self.bias, dtype=self.dtype)

  def __call__(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    return linear_cross_entropy(x, w, labels, b, ignore_index=self.ignore_index,
                                reduction=self.reduction, label_smoothing=self.label_smoothing,
                                chunk_size=self.chunk_size)

  def nll(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    return linear_cross_entropy(x, w, labels, b, ignore_index=self.ignore_index,
                                reduction="none", chunk_size=self.chunk_size)

  def log_prob(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    acc = _checks.compute_dtype(x, w)  # float32 for half inputs, float64 under x64
    logits = jnp.dot(x, w.T, preferred_element_type=acc)
    if b is not None:
      logits = logits + b.astype(acc).reshape((1,) * (logits.ndim - 1) + (-1,))
    return jax.nn.log_softmax(logits, axis=-1)

  def predict(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    return linear_argmax(x, w, b, chunk_size=self.chunk_size)
