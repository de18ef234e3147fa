"""The NNX shell of the sampled-softmax head (:class:`SampledSoftmax`)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import LinearNNXHead, linear_weight_init
from jax_bigsoftmax.sampled._head import SampledSoftmax
from jax_bigsoftmax.sampled._linen import SampledSoftmaxLoss as _LinenSampledSoftmaxLoss

_RngArg = nnx.Rngs | nnx.RngStream | jax.Array | None


class _SamplerKey(nn.Module):
  """The key a root linen head draws with ``make_rng("sampler")``."""

  @nn.compact
  def __call__(self):
    return self.make_rng("sampler")


def _as_linen_draws(key: jax.Array) -> jax.Array:
  """The negatives' key the linen head uses when applied with ``rngs={"sampler": key}``,
  so the two twins draw the same samples for the same key."""
  return _SamplerKey().apply({}, rngs={"sampler": key})


class SampledSoftmaxLoss(LinearNNXHead):
  """NNX twin of :class:`jax_bigsoftmax.SampledSoftmaxLoss` (sampled in training, exact in eval).

  Same keywords as the linen head (``num_classes, features, num_sampled,
  num_true=1, remove_accidental_hits=True``, ``ignore_index``, ``dtype``,
  ``param_dtype``, ``weight_init``, ``mesh``, ``vocab_axis``, ``data_axis``)
  plus ``rngs`` and ``deterministic``. Params: ``weight`` ``[num_classes,
  features]``, ``bias`` ``[num_classes]``, drawn as the linen head's ``init``
  draws them for the key ``rngs.params()``.

  Training (``deterministic=False``, the default, or after ``head.train()``):
  the S negatives are drawn with a key from the ``sampler`` stream of the
  ``rngs`` given to the constructor (its ``default`` stream if it has no
  ``sampler``), or from the ``rngs`` passed to the call (an ``nnx.Rngs``, an
  ``RngStream`` or a ``jax.random`` key, which is then used exactly as the
  linen head's ``rngs={"sampler": key}``). Evaluation (``head.eval()``,
  ``nnx.view(head, deterministic=True)`` or ``deterministic=True`` in the
  call): the exact full-softmax loss, no randomness.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> head = jnnx.SampledSoftmaxLoss(num_classes=100, features=8, num_sampled=10,
    ...                                rngs=nnx.Rngs(0, sampler=1))
    >>> x, y = jnp.ones((2, 3, 8)), jnp.zeros((2, 3), jnp.int32)
    >>> head(x, y).shape, head(x, y, rngs=jax.random.key(2)).shape
    ((2, 3), (2, 3))
    >>> head.eval()
    >>> bool(jnp.allclose(head(x, y), head.nll(x, y)))
    True

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation".
  """

  linen_class = _LinenSampledSoftmaxLoss

  def __init__(self, num_classes: int, features: int, num_sampled: int, num_true: int = 1,
               remove_accidental_hits: bool = True, ignore_index: int = -100, dtype: Any = None,
               param_dtype: Any = jnp.float32, weight_init: Any = linear_weight_init,
               mesh: Any = None, vocab_axis: str | None = None, data_axis: str | None = None, *,
               rngs: nnx.Rngs | None = None, deterministic: bool = False):
    self._init_head(SampledSoftmax(num_classes, features, num_sampled, num_true,
                                   remove_accidental_hits, ignore_index, dtype, param_dtype,
                                   weight_init, mesh, vocab_axis, data_axis), rngs)
    self.deterministic = deterministic
    self.use_sampler(rngs)

  def use_sampler(self, rngs: nnx.Rngs | None) -> None:
    """Draws the negatives from ``rngs``' ``sampler`` stream (its ``default`` one without)."""
    has_stream = isinstance(rngs, nnx.Rngs) and any(s in ("sampler", "default") for s in rngs)
    self.rngs = rngs["sampler"].fork() if has_stream else nnx.data(None)

  def set_view(self, deterministic: bool | None = None):
    """Used by ``nnx.view``: ``deterministic=True`` gives the exact loss."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _sampler_key(self, rngs: _RngArg) -> jax.Array:
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
      return _as_linen_draws(rngs["sampler"]())
    if isinstance(rngs, nnx.RngStream):
      return _as_linen_draws(rngs())
    if isinstance(rngs, jax.Array):
      return _as_linen_draws(rngs)
    if rngs is None:
      raise ValueError("SampledSoftmaxLoss is in training mode (deterministic=False) but has no"
                       " sampler rng: build it with rngs=nnx.Rngs(sampler=...), pass rngs= to"
                       " the call, or call head.eval() for the exact loss.")
    raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or jax.random key; got"
                    f" {type(rngs).__name__}.")

  def __call__(self, inputs: ArrayLike, labels: ArrayLike, *, deterministic: bool | None = None,
               rngs: _RngArg = None) -> jax.Array:
    """Per-example loss ``[...]``: sampled in training, exact when deterministic."""
    deterministic = self.deterministic if deterministic is None else deterministic
    key = None if deterministic else self._sampler_key(rngs)
    return self.config.loss(self._params(), inputs, labels,
                          deterministic=deterministic, key=key)
