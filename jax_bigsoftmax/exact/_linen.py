"""The linen shell of the full-softmax head (:class:`FullSoftmax`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import LinearLinenHead
from jax_bigsoftmax.exact._head import FullSoftmax, default_weight_init


class FullSoftmaxLoss(LinearLinenHead):
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
      Memory: one fwd+bwd step needs at most 1/6 of the unsharded head's
      memory per device on an 8-way vocabulary mesh (compiled-memory test at
      N=4096, D=1024, V=2**20; table in docs/benchmarks.md).
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

  config_class = FullSoftmax

  def __call__(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """The training loss (the head's ``reduction``, ``label_smoothing`` and ``z_loss``)."""
    return self.config.loss(self.params_, inputs, labels)
