"""The NNX shell of the adaptive-softmax head (:class:`AdaptiveSoftmax`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import NNXHead
from jax_bigsoftmax.adaptive._head import AdaptiveSoftmax, ASMOutput
from jax_bigsoftmax.adaptive._linen import AdaptiveLogSoftmaxWithLoss as _LinenAdaptive


class AdaptiveLogSoftmaxWithLoss(NNXHead):
  """NNX twin of :class:`jax_bigsoftmax.AdaptiveLogSoftmaxWithLoss` (torch's layer).

  Same arguments (``in_features, n_classes, cutoffs, div_value=4.0,
  head_bias=False``, ``capacity``, ``param_dtype``, ``mesh``, ``vocab_axis``,
  ``data_axis``) plus ``rngs``; the same torch validation errors. Params
  (Paddle layouts): ``head_weight`` ``[D, shortlist + n_clusters]``,
  ``head_bias``, ``tail_{i}_proj`` ``[D, hsz_i]``, ``tail_{i}_out``
  ``[hsz_i, osz_i]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> head = jnnx.AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs=(4, 10), div_value=2.0,
    ...                                        rngs=nnx.Rngs(0))
    >>> x, y = jnp.ones((3, 8)), jnp.array([0, 5, 19])
    >>> out = head(x, y)
    >>> out.output.shape, out.loss.shape, head.tail_1_out.shape
    ((3,), (), (2, 10))

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016.
  """

  linen_class = _LinenAdaptive

  def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int],
               div_value: float = 4.0, head_bias: bool = False,
               capacity: int | Sequence[int] | None = None, param_dtype: Any = jnp.float32,
               mesh: Any = None, vocab_axis: str | None = None, data_axis: str | None = None, *,
               rngs: nnx.Rngs | None = None):
    self._init_head(AdaptiveSoftmax(in_features, n_classes, cutoffs, div_value, head_bias,
                                    capacity, param_dtype, mesh, vocab_axis, data_axis), rngs)

  def __call__(self, input: ArrayLike, target: ArrayLike) -> ASMOutput:  # noqa: A002
    """``ASMOutput(output [...], loss)``: target log-probabilities and their mean NLL."""
    return self.config.loss(self._params(), input, target)

  def nll(self, x: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = -100,
          mask: ArrayLike | None = None) -> jax.Array:
    """Per-token NLL ``[...]``; 0 where ``labels == ignore_index`` or ``mask`` is False."""
    return self.config.nll(self._params(), x, labels, ignore_index=ignore_index, mask=mask)

  def log_prob(self, x: ArrayLike) -> jax.Array:
    """``[..., n_classes]`` log-probabilities."""
    return self.config.log_prob(self._params(), x)

  def predict(self, x: ArrayLike) -> jax.Array:
    """``[...]`` exact arg-max class."""
    return self.config.predict(self._params(), x)
