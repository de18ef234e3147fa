"""The hierarchical-sigmoid head: its configuration, parameters and pure methods.

The linen (:mod:`._linen`) and NNX (:mod:`._nnx`) modules are shells over
:class:`HSigmoid`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_bigsoftmax._core.heads import ParamSpec, check_sizes
from jax_bigsoftmax.hsigmoid import _functional as _hsigmoid
from jax_bigsoftmax.hsigmoid import _tree

# Paddle's default for weights is Xavier-uniform (symmetric in the two fans).
default_weight_init = nn.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class HSigmoid:
  """Configuration of :class:`jax_bigsoftmax.HSigmoidLoss` (its keywords), checked once."""

  feature_size: int
  num_classes: int
  is_custom: bool = False
  use_bias: bool = True
  is_sparse: bool = False
  paddle_compat: bool = False
  param_dtype: Any = jnp.float32
  weight_init: Any = default_weight_init

  placement = None  # never sharded

  def __post_init__(self):
    _tree.check_num_classes(self.num_classes)
    check_sizes(feature_size=self.feature_size)

  def param_specs(self) -> dict[str, ParamSpec]:
    rows = self.num_classes if self.is_custom else self.num_classes - 1
    specs = {"weight": ParamSpec((rows, self.feature_size), self.weight_init)}
    if self.use_bias:
      specs["bias"] = ParamSpec((rows, 1), nn.initializers.zeros)
    return specs

  def _tables(self, path_table, path_code, what):
    if self.is_custom and path_table is None:
      raise ValueError(f"HSigmoidLoss(is_custom=True).{what} needs path_table and path_code.")
    if not self.is_custom and (path_table is not None or path_code is not None):
      raise ValueError(f"HSigmoidLoss(is_custom=False).{what} got path tables; create the"
                       " layer with is_custom=True to use a custom tree.")

  def loss(self, params, input, label, path_table=None, path_code=None):  # noqa: A002
    """Paddle's loss ``[..., 1]`` (its quirks with ``paddle_compat``)."""
    self._tables(path_table, path_code, "__call__")
    return _hsigmoid.hsigmoid_loss(input, label, self.num_classes, params["weight"],
                                   params.get("bias"), path_table, path_code,
                                   is_sparse=self.is_sparse, paddle_compat=self.paddle_compat)

  def nll(self, params, x, labels, path_table=None, path_code=None):
    """Exact per-token ``-log p(label | x)`` ``[...]`` (never Paddle's quirks)."""
    self._tables(path_table, path_code, "nll")
    return _hsigmoid.hsigmoid_loss(x, labels, self.num_classes, params["weight"],
                                   params.get("bias"), path_table, path_code)[..., 0]

  def log_prob(self, params, x, path_table=None, path_code=None):
    """``[..., V]`` log-probabilities (custom: per-class tables ``[V, L]``)."""
    self._tables(path_table, path_code, "log_prob")
    return _hsigmoid.hsigmoid_log_prob(
        x, params["weight"], params.get("bias"),
        num_classes=None if self.is_custom else self.num_classes,
        path_table=path_table, path_code=path_code)

  def predict(self, params, x, path_table=None, path_code=None):
    """``[...]`` arg-max class by tree search (see :func:`hsigmoid_predict`)."""
    self._tables(path_table, path_code, "predict")
    return _hsigmoid.hsigmoid_predict(
        x, params["weight"], params.get("bias"),
        num_classes=None if self.is_custom else self.num_classes,
        path_table=path_table, path_code=path_code)
