"""The NNX shell of the full-softmax head (:class:`FullSoftmax`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import LinearNNXHead
from jax_bigsoftmax.exact._head import FullSoftmax, default_weight_init
from jax_bigsoftmax.exact._linen import FullSoftmaxLoss as _LinenFullSoftmaxLoss


class FullSoftmaxLoss(LinearNNXHead):
  """NNX twin of :class:`jax_bigsoftmax.FullSoftmaxLoss` (exact softmax head).

  Same keywords as the linen head plus ``rngs``; same parameters: ``weight``
  ``[num_classes, features]``, ``bias`` ``[num_classes]`` (``nnx.Param``),
  drawn as the linen head's ``init`` draws them for the key ``rngs.params()``.

  Args:
    num_classes: vocabulary size V.
    features: input feature size D.
    use_bias: whether to learn a bias.
    ignore_index: label value that contributes 0 and is left out of the mean.
    label_smoothing: smoothing used by ``__call__`` (``nll`` is always exact).
    z_loss: coefficient of the ``lse**2`` auxiliary loss added by ``__call__``.
    logit_softcap: logits become ``c * tanh(z / c)`` in every method.
    reduction: reduction used by ``__call__``.
    chunk_size: vocabulary chunk (None: automatic).
    dtype: computation dtype (None: the inputs' and params' result type).
    param_dtype: dtype of the parameters.
    weight_init: initialiser of ``weight`` (a ``flax.linen.with_partitioning``
      annotation is kept as the param's sharding).
    mesh, vocab_axis, data_axis: a vocabulary-sharded head, as the linen head.
    rngs: ``nnx.Rngs`` whose ``params`` stream initialises the parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> head = jnnx.FullSoftmaxLoss(num_classes=10, features=4, rngs=nnx.Rngs(0))
    >>> x, y = jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    >>> head.weight.shape, head(x, y).shape, head.nll(x, y).shape
    ((10, 4), (), (2, 3))
    >>> head.log_prob(x).shape, head.predict(x).shape
    ((2, 3, 10), (2, 3))
  """

  linen_class = _LinenFullSoftmaxLoss

  def __init__(self, num_classes: int, features: int, use_bias: bool = True,
               ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
               logit_softcap: float | None = None, reduction: str = "mean",
               chunk_size: int | None = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               weight_init: Any = default_weight_init, mesh: Any = None,
               vocab_axis: str | None = None, data_axis: str | None = None, *,
               rngs: nnx.Rngs | None = None):
    self._init_head(FullSoftmax(num_classes, features, use_bias, ignore_index, label_smoothing,
                                z_loss, logit_softcap, reduction, chunk_size, dtype, param_dtype,
                                weight_init, mesh, vocab_axis, data_axis), rngs)

  def __call__(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """The training loss (the head's ``reduction``, ``label_smoothing`` and ``z_loss``)."""
    return self.config.loss(self._params(), inputs, labels)
