"""The linen shell of the hierarchical-sigmoid head (:class:`HSigmoid`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import LinenHead
from jax_bigsoftmax.hsigmoid._head import HSigmoid, default_weight_init


class HSigmoidLoss(LinenHead):
  """Hierarchical sigmoid output layer, ``paddle.nn.HSigmoidLoss`` for Flax.

  The common head interface: ``__call__(input, label, path_table=None,
  path_code=None) -> [..., 1]`` (Paddle's loss, quirks included when
  ``paddle_compat``), ``nll(x, labels) -> [...]`` (the exact per-token NLL),
  ``log_prob(x) -> [..., V]`` and ``predict(x) -> [...]``.

  Params (Paddle layout): ``weight`` ``[num_nodes, feature_size]`` and, with
  ``use_bias``, ``bias`` ``[num_nodes, 1]``, where ``num_nodes`` is
  ``num_classes - 1`` for the default tree and ``num_classes`` with
  ``is_custom=True`` (then ``num_classes`` counts the non-leaf nodes, as in
  Paddle). A custom tree needs per-example tables in ``__call__``/``nll``
  and per-class tables ``[V, L]`` in ``log_prob``/``predict``.

  Attributes:
    feature_size: input feature size D.
    num_classes: classes (default tree) or non-leaf nodes (custom tree), >= 2.
    is_custom: whether paths come from ``path_table``/``path_code``.
    use_bias: whether to learn a bias (Paddle's ``bias_attr=False`` is False).
    is_sparse: accepted for Paddle parity (no effect; gradients are dense).
    paddle_compat: ``__call__`` reproduces Paddle's clipping and padding.
    param_dtype: dtype of the parameters.
    weight_init: initializer of ``weight`` (Xavier-uniform, as Paddle).

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jbs.HSigmoidLoss(feature_size=4, num_classes=10)
    >>> x, y = jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    >>> params = head.init(jax.random.key(0), x, y)
    >>> params["params"]["weight"].shape, head.apply(params, x, y).shape
    ((9, 4), (2, 3, 1))
    >>> head.apply(params, x, method=head.log_prob).shape
    (2, 3, 10)
  """

  feature_size: int
  num_classes: int
  is_custom: bool = False
  use_bias: bool = True
  is_sparse: bool = False
  paddle_compat: bool = False
  param_dtype: Any = jnp.float32
  weight_init: Any = default_weight_init

  config_class = HSigmoid

  def __call__(self, input: ArrayLike, label: ArrayLike, path_table: ArrayLike | None = None,  # noqa: A002
               path_code: ArrayLike | None = None) -> jax.Array:
    """Paddle's loss ``[..., 1]`` (its quirks with ``paddle_compat``)."""
    return self.config.loss(self.params_, input, label, path_table, path_code)

  def nll(self, x: ArrayLike, labels: ArrayLike, path_table: ArrayLike | None = None,
          path_code: ArrayLike | None = None) -> jax.Array:
    """Exact per-token ``-log p(label | x)`` ``[...]`` (never Paddle's quirks)."""
    return self.config.nll(self.params_, x, labels, path_table, path_code)

  def log_prob(self, x: ArrayLike, path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """``[..., V]`` log-probabilities (custom: per-class tables ``[V, L]``)."""
    return self.config.log_prob(self.params_, x, path_table, path_code)

  def predict(self, x: ArrayLike, path_table: ArrayLike | None = None,
              path_code: ArrayLike | None = None) -> jax.Array:
    """``[...]`` arg-max class by tree search (see :func:`hsigmoid_predict`)."""
    return self.config.predict(self.params_, x, path_table, path_code)
