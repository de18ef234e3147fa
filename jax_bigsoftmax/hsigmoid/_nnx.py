"""The NNX shell of the hierarchical-sigmoid head (:class:`HSigmoid`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import NNXHead
from jax_bigsoftmax.hsigmoid._head import HSigmoid, default_weight_init
from jax_bigsoftmax.hsigmoid._linen import HSigmoidLoss as _LinenHSigmoidLoss


class HSigmoidLoss(NNXHead):
  """NNX twin of :class:`jax_bigsoftmax.HSigmoidLoss` (``paddle.nn.HSigmoidLoss``).

  Same arguments (``feature_size, num_classes, is_custom=False,
  use_bias=True, is_sparse=False, paddle_compat=False``, ``param_dtype``,
  ``weight_init``) plus ``rngs``. Params (Paddle layout): ``weight``
  ``[num_nodes, feature_size]``, ``bias`` ``[num_nodes, 1]``. A custom tree
  takes per-example tables in ``__call__``/``nll`` and per-class tables
  ``[V, L]`` in ``log_prob``/``predict``, as the linen head.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> head = jnnx.HSigmoidLoss(feature_size=4, num_classes=10, rngs=nnx.Rngs(0))
    >>> x, y = jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    >>> head.weight.shape, head.bias.shape, head(x, y).shape, head.log_prob(x).shape
    ((9, 4), (9, 1), (2, 3, 1), (2, 3, 10))

  References:
    Morin & Bengio, "Hierarchical probabilistic neural network language
    model", 2005.
  """

  linen_class = _LinenHSigmoidLoss

  def __init__(self, feature_size: int, num_classes: int, is_custom: bool = False,
               use_bias: bool = True, is_sparse: bool = False, paddle_compat: bool = False,
               param_dtype: Any = jnp.float32, weight_init: Any = default_weight_init, *,
               rngs: nnx.Rngs | None = None):
    self._init_head(HSigmoid(feature_size, num_classes, is_custom, use_bias, is_sparse,
                             paddle_compat, param_dtype, weight_init), rngs)

  def __call__(self, input: ArrayLike, label: ArrayLike,  # noqa: A002
               path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """Paddle's loss ``[..., 1]`` (its quirks with ``paddle_compat``)."""
    return self.config.loss(self._params(), input, label, path_table, path_code)

  def nll(self, x: ArrayLike, labels: ArrayLike, path_table: ArrayLike | None = None,
          path_code: ArrayLike | None = None) -> jax.Array:
    """Exact per-token ``-log p(label | x)`` ``[...]``."""
    return self.config.nll(self._params(), x, labels, path_table, path_code)

  def log_prob(self, x: ArrayLike, path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """``[..., V]`` log-probabilities (custom tree: per-class tables ``[V, L]``)."""
    return self.config.log_prob(self._params(), x, path_table, path_code)

  def predict(self, x: ArrayLike, path_table: ArrayLike | None = None,
              path_code: ArrayLike | None = None) -> jax.Array:
    """``[...]`` arg-max class by tree search."""
    return self.config.predict(self._params(), x, path_table, path_code)
