"""Flax head for the hierarchical sigmoid (``paddle.nn.HSigmoidLoss``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jax_bigsoftmax import _hsigmoid
from jax_bigsoftmax import _hsigmoid_tree as _tree

# Paddle's default for weights is Xavier-uniform (symmetric in the two fans).
default_weight_init = nn.initializers.glorot_uniform()


class HSigmoidLoss(nn.Module):
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

  def setup(self):
    _tree.check_num_classes(self.num_classes)
    if self.feature_size < 1:
      raise ValueError(f"feature_size must be >= 1; got {self.feature_size}.")
    rows = self.num_classes if self.is_custom else self.num_classes - 1
    self.weight = self.param("weight", self.weight_init, (rows, self.feature_size),
                             self.param_dtype)
    self.bias = (self.param("bias", nn.initializers.zeros, (rows, 1), self.param_dtype)
                 if self.use_bias else None)

  def _tables(self, path_table, path_code, what):
    if self.is_custom and path_table is None:
      raise ValueError(f"HSigmoidLoss(is_custom=True).{what} needs path_table and path_code.")
    if not self.is_custom and (path_table is not None or path_code is not None):
      raise ValueError(f"HSigmoidLoss(is_custom=False).{what} got path tables; create the"
                       " layer with is_custom=True to use a custom tree.")

  def __call__(self, input: ArrayLike, label: ArrayLike, path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    self._tables(path_table, path_code, "__call__")
    return _hsigmoid.hsigmoid_loss(input, label, self.num_classes, self.weight, self.bias,
                                   path_table, path_code, is_sparse=self.is_sparse,
                                   paddle_compat=self.paddle_compat)

  def nll(self, x: ArrayLike, labels: ArrayLike, path_table: ArrayLike | None = None,
          path_code: ArrayLike | None = None) -> jax.Array:
    """Exact per-token ``-log p(label | x)`` ``[...]`` (never Paddle's quirks)."""
    self._tables(path_table, path_code, "nll")
    return _hsigmoid.hsigmoid_loss(x, labels, self.num_classes, self.weight, self.bias,
                                   path_table, path_code)[..., 0]

  def log_prob(self, x: ArrayLike, path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """``[..., V]`` log-probabilities (custom: per-class tables ``[V, L]``)."""
    self._tables(path_table, path_code, "log_prob")
    return _hsigmoid.hsigmoid_log_prob(
        x, self.weight, self.bias, num_classes=None if self.is_custom else self.num_classes,
        path_table=path_table, path_code=path_code)

  def predict(self, x: ArrayLike, path_table: ArrayLike | None = None,
              path_code: ArrayLike | None = None) -> jax.Array:
    """``[...]`` arg-max class by tree search (see :func:`hsigmoid_predict`)."""
    self._tables(path_table, path_code, "predict")
    return _hsigmoid.hsigmoid_predict(
        x, self.weight, self.bias, num_classes=None if self.is_custom else self.num_classes,
        path_table=path_table, path_code=path_code)


def hsigmoid_params_from_paddle(state_dict: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``paddle.nn.HSigmoidLoss.state_dict()`` -> ``params`` of :class:`HSigmoidLoss`.

  Values may be Paddle tensors or numpy arrays (convert with ``.numpy()``);
  keys may carry a prefix (``"head.weight"``). Without a bias entry (Paddle's
  ``bias_attr=False``) build the module with ``use_bias=False``.

  Returns:
    ``{"weight": [num_nodes, D], "bias": [num_nodes, 1]}`` (bias only when
    present): use as ``module.apply({"params": params}, ...)``.

  Examples:
    >>> import numpy as np
    >>> from jax_bigsoftmax import interop
    >>> sd = {"weight": np.zeros((9, 4), np.float32), "bias": np.zeros((9, 1), np.float32)}
    >>> sorted(interop.hsigmoid_params_from_paddle(sd))
    ['bias', 'weight']
  """
  found = {}
  for key, value in state_dict.items():
    leaf = str(key).rsplit(".", 1)[-1]
    if leaf in ("weight", "bias"):
      if leaf in found:
        raise ValueError(f"state_dict has more than one '{leaf}' entry (e.g. {key!r}); pass the"
                         " HSigmoidLoss layer's own state_dict.")
      found[leaf] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
  if "weight" not in found:
    raise ValueError(f"state_dict has no 'weight' entry; got keys {sorted(state_dict)}.")
  w = found["weight"]
  if w.ndim != 2:
    raise ValueError(f"state_dict['weight'] must have rank 2 [num_nodes, D]; got {w.shape}.")
  params = {"weight": jnp.asarray(w)}
  if "bias" in found:
    b = found["bias"]
    if b.shape not in ((w.shape[0], 1), (w.shape[0],)):
      raise ValueError(f"state_dict['bias'] must have shape ({w.shape[0]}, 1); got {b.shape}.")
    params["bias"] = jnp.asarray(b.reshape(w.shape[0], 1))
  return params
