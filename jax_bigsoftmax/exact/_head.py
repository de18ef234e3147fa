"""The exact full-softmax head: its configuration, parameters and pure methods.

The linen module (:mod:`._linen`) and the NNX module (:mod:`._nnx`) are shells
over :class:`FullSoftmax`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jax_bigsoftmax._core.heads import LinearHeadMethods, check_sizes, linear_weight_init
from jax_bigsoftmax._core.linear import LinearSoftmax
from jax_bigsoftmax._core.sharding import head_placement

default_weight_init = linear_weight_init


@dataclasses.dataclass(frozen=True)
class FullSoftmax(LinearHeadMethods):
  """Configuration of :class:`jax_bigsoftmax.FullSoftmaxLoss` (its keywords), checked once."""

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

  def __post_init__(self):
    check_sizes(num_classes=self.num_classes, features=self.features)
    placement = head_placement(self.mesh, self.vocab_axis, self.data_axis)
    object.__setattr__(self, "placement", placement)
    object.__setattr__(self, "ops", LinearSoftmax(placement, self.chunk_size, self.logit_softcap))

  def loss(self, params, inputs, labels):
    """The training loss: the head's ``reduction``, ``label_smoothing`` and ``z_loss``."""
    x, w, b = self.cast(params, inputs)
    return self.ops.cross_entropy(x, w, b, labels, ignore_index=self.ignore_index,
                                  reduction=self.reduction,
                                  label_smoothing=self.label_smoothing, z_loss=self.z_loss)
