"""The linen shell of the adaptive-softmax head (:class:`AdaptiveSoftmax`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jax_bigsoftmax._core.heads import LinenHead
from jax_bigsoftmax.adaptive._head import AdaptiveSoftmax, ASMOutput


class AdaptiveLogSoftmaxWithLoss(LinenHead):
  """Adaptive softmax head (torch's ``nn.AdaptiveLogSoftmaxWithLoss``).

  The head scores the shortlist ``[0, cutoffs[0])`` plus one token per tail
  cluster; tail cluster ``i`` (classes ``[cutoffs[i], cutoffs[i+1])``) scores
  its words through a projection to ``hsz_i = in_features //
  div_value**(i+1)`` features. Labels must be sorted by frequency (most
  frequent = 0; see :func:`jax_bigsoftmax.frequency_sort`).

  Params (Paddle's layouts, ``[in, out]``): ``head_weight`` ``[D, shortlist +
  n_clusters]``, ``head_bias`` ``[shortlist + n_clusters]`` (when
  ``head_bias``), ``tail_{i}_proj`` ``[D, hsz_i]``, ``tail_{i}_out`` ``[hsz_i,
  osz_i]``. Initialised like ``torch.nn.Linear``. Use
  :func:`jax_bigsoftmax.interop.adaptive_params_from_torch` /
  ``adaptive_params_from_paddle`` to load trained weights.

  Attributes:
    in_features: D, the size of the input features.
    n_classes: number of classes.
    cutoffs: torch's cutoffs, sorted unique ints in ``[1, n_classes-1]``.
    div_value: hidden size divisor per cluster (default 4.0).
    head_bias: whether the head has a bias (default False).
    capacity: rows per gather block for the tails (see
      :func:`jax_bigsoftmax.adaptive_log_softmax_with_loss`); None = default.
    param_dtype: dtype of the parameters.
    mesh: the ``jax.sharding.Mesh`` (Auto axes) of a vocabulary-sharded head.
    vocab_axis: mesh axis to shard the classes on. When set, ``head_weight``,
      ``head_bias`` and every ``tail_{i}_out`` carry ``nn.with_partitioning``
      metadata on their class (last) axis (same names and shapes as unsharded;
      the small ``tail_{i}_proj`` stay replicated), and every method runs
      vocabulary-parallel kernels: the head and each tail cluster are linear
      softmaxes over their own classes, so the target log-probability is
      ``-(CE_head + CE_tail)`` with :func:`vocab_parallel_cross_entropy`;
      ``log_prob`` returns ``[..., n_classes]`` sharded on the classes;
      ``predict`` compares the vocabulary-parallel arg-max of each piece.
      Same values and gradients as the unsharded head (every row's tail is
      evaluated on its shard's columns: no row gather, no ``capacity``). A
      piece whose class count (``shortlist + n_clusters`` for the head,
      ``osz_i`` for a tail) does not divide by the axis size stays replicated:
      choose cutoffs that make them divide to shard every piece.
      Memory: one fwd+bwd step needs at most 1/6 of the unsharded head's
      memory per device on an 8-way vocabulary mesh (compiled-memory test at
      N=4096, D=1024, V=2**20; table in docs/benchmarks.md).
    data_axis: optional mesh axis the rows of the inputs are split on.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jbs.AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs=(4, 10), div_value=2.0)
    >>> x, y = jnp.ones((3, 8)), jnp.array([0, 5, 19])
    >>> params = head.init(jax.random.PRNGKey(0), x, y)
    >>> out = head.apply(params, x, y)
    >>> out.output.shape, out.loss.shape
    ((3,), ())
    >>> head.apply(params, x, method="log_prob").shape
    (3, 20)

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016.
  """

  in_features: int
  n_classes: int
  cutoffs: Sequence[int]
  div_value: float = 4.0
  head_bias: bool = False
  capacity: int | Sequence[int] | None = None
  param_dtype: Any = jnp.float32
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None

  config_class = AdaptiveSoftmax

  def __call__(self, input: jax.Array, target: jax.Array) -> ASMOutput:  # noqa: A002
    """Target log-probabilities ``[...]`` and the mean NLL (torch's forward)."""
    return self.config.loss(self.params_, input, target)

  def nll(self, x: jax.Array, labels: jax.Array, *, ignore_index: int | None = -100,
          mask: jax.Array | None = None) -> jax.Array:
    """Per-token negative log-likelihood ``[...]``.

    Positions with ``labels == ignore_index`` or ``mask == False`` give 0 (with
    zero gradient); the tails never see them. Sum and divide by the number of
    kept tokens for a padded-batch mean.
    """
    return self.config.nll(self.params_, x, labels, ignore_index=ignore_index, mask=mask)

  def log_prob(self, x: jax.Array) -> jax.Array:
    """Log-probabilities of all classes, ``[..., n_classes]``."""
    return self.config.log_prob(self.params_, x)

  def predict(self, x: jax.Array) -> jax.Array:
    """Arg-max class ``[...]`` (exact; torch's shortcut on one device)."""
    return self.config.predict(self.params_, x)
