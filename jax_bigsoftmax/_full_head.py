"""Flax head for the exact full softmax (the baseline every head is measured against)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks, _sharded_heads
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
    z_loss: coefficient of the ``lse**2`` auxiliary loss added by ``__call__``.
    logit_softcap: logits become ``c * tanh(z / c)`` in every method (Gemma 2).
    reduction: reduction used by ``__call__``.
    chunk_size: vocabulary chunk for ``linear_cross_entropy`` (None: automatic).
    dtype: computation dtype for the matmuls (None: ``jnp.result_type`` of the
      inputs and the params, as ``flax.linen.Dense``: params are never cast
      down to the inputs' dtype, integer inputs are promoted to float);
      log-sum-exp is always accumulated in float32 or wider.
    param_dtype: dtype of the parameters.
    mesh: the ``jax.sharding.Mesh`` (Auto axes) of a vocabulary-sharded head.
    vocab_axis: mesh axis to shard the vocabulary on. When set, ``weight`` and
      ``bias`` carry ``nn.with_partitioning`` metadata ``(vocab_axis, None)`` /
      ``(vocab_axis,)`` (same names and shapes: one checkpoint loads into
      either head) and every method runs a vocabulary-parallel kernel
      (:func:`vocab_parallel_cross_entropy`; ``log_prob`` returns ``[..., V]``
      sharded on V; ``predict`` is a vocabulary-parallel arg-max): same values
      and gradients as the unsharded head, and no device holds the whole
      weight or ``[N, V]`` logits. V must divide by the size of the axis.
    data_axis: optional mesh axis the rows of the inputs are split on.

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
  z_loss: float = 0.0
  logit_softcap: float | None = None
  reduction: str = "mean"
  chunk_size: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  weight_init: Any = default_weight_init
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None

  def setup(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
    if self.features < 1:
      raise ValueError(f"features must be >= 1; got {self.features}.")
    shard = _sharded_heads.vocab_partitioner(self)
    v, d = self.num_classes, self.features
    self.weight = self.param("weight", shard(self.weight_init, (v, d), 0, name="weight"), (v, d),
                             self.param_dtype)
    self.bias = (self.param("bias", shard(nn.initializers.zeros, (v,), 0, name="bias"), (v,),
                            self.param_dtype) if self.use_bias else None)

  def _cast(self, x):
    return _checks.promote_head_operands(x, self.weight, self.bias, dtype=self.dtype)

  def __call__(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.cross_entropy(self, x, w, b, labels, reduction=self.reduction,
                                          label_smoothing=self.label_smoothing,
                                          z_loss=self.z_loss)
    return linear_cross_entropy(x, w, labels, b, ignore_index=self.ignore_index,
                                reduction=self.reduction, label_smoothing=self.label_smoothing,
                                z_loss=self.z_loss, logit_softcap=self.logit_softcap,
                                chunk_size=self.chunk_size)

  def nll(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.cross_entropy(self, x, w, b, labels, reduction="none")
    return linear_cross_entropy(x, w, labels, b, ignore_index=self.ignore_index,
                                reduction="none", logit_softcap=self.logit_softcap,
                                chunk_size=self.chunk_size)

  def log_prob(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.log_softmax(self, x, w, b)
    acc = _checks.compute_dtype(x, w)  # float32 for half inputs, float64 under x64
    logits = jnp.dot(x, w.T, preferred_element_type=acc)
    if b is not None:
      logits = logits + b.astype(acc).reshape((1,) * (logits.ndim - 1) + (-1,))
    if self.logit_softcap is not None:
      logits = self.logit_softcap * jnp.tanh(logits / self.logit_softcap)
    return jax.nn.log_softmax(logits, axis=-1)

  def predict(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.argmax(self, x, w, b)
    return linear_argmax(x, w, b, chunk_size=self.chunk_size)
