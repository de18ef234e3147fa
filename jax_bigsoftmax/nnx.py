"""Flax NNX heads: ``flax.nnx`` twins of the library's four linen heads.

Each NNX head takes the same configuration keywords as its linen twin plus
``rngs: nnx.Rngs``, holds the same parameters (same names, shapes and
layouts, as ``nnx.Param`` attributes: ``head.weight``, ``head.tail_0_proj``)
and has the common head interface ``__call__(x, labels)``, ``nll``,
``log_prob`` and ``predict``.

One implementation serves both APIs: each head is a configuration object
(its keywords, validated once, and its parameter declarations) with pure
methods of ``(params, inputs, ...)``; the linen module and the NNX module are
thin shells calling them, each written for its API. An NNX head draws the
initial values the linen ``init`` draws for the same key, so the two are
interchangeable at any step; ``head.linen`` is its linen twin.

Sharding metadata: a parameter declared with a partitioning (a sharded head,
or a ``flax.linen.with_partitioning`` initialiser) becomes an ``nnx.Param``
with the same ``out_sharding`` names and ``mesh`` (a head's ``mesh`` fills in
a missing one), so ``nnx.get_partition_spec`` works on the NNX head.

Migration: :func:`from_linen` builds the NNX head of a linen head and its
params; :func:`to_linen_params` gives back the linen ``params``.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax import nnx

from jax_bigsoftmax._core import heads as _heads
from jax_bigsoftmax.adaptive._nnx import AdaptiveLogSoftmaxWithLoss
from jax_bigsoftmax.exact._nnx import FullSoftmaxLoss
from jax_bigsoftmax.hsigmoid._nnx import HSigmoidLoss
from jax_bigsoftmax.sampled._nnx import SampledSoftmaxLoss

__all__ = (
    "AdaptiveLogSoftmaxWithLoss",
    "FullSoftmaxLoss",
    "HSigmoidLoss",
    "SampledSoftmaxLoss",
    "from_linen",
    "to_linen_params",
)

_TWINS: tuple[type[_heads.NNXHead], ...] = (
    FullSoftmaxLoss, AdaptiveLogSoftmaxWithLoss, HSigmoidLoss, SampledSoftmaxLoss)
_METHODS = ("__call__", "nll", "log_prob", "predict")


@functools.lru_cache(maxsize=None)
def _linen_subclass_twin(twin: type[_heads.NNXHead], linen_cls: type[nn.Module]):
  """The NNX twin of a user's linen subclass that redefines head methods: those methods
  run as the subclass defines them (``Module.apply`` with the method itself)."""
  redefined = [m for m in _METHODS
               if getattr(linen_cls, m) is not getattr(twin.linen_class, m)]
  if not redefined:
    return None

  def bridge(name):
    def method(self, *args, **kwargs):
      return self._linen_module.apply({"params": to_linen_params(self)}, *args,
                                      method=getattr(linen_cls, name), **kwargs)
    method.__name__ = name
    return method

  namespace = {name: bridge(name) for name in redefined}
  namespace["linen"] = property(lambda self: self._linen_module)
  return type(twin.__name__, (twin,), namespace)


def from_linen(linen_head: nn.Module, params: Mapping[str, Any], *,
               rngs: nnx.Rngs | None = None) -> _heads.NNXHead:
  """The NNX head with ``linen_head``'s configuration and the weights ``params``.

  Args:
    linen_head: one of the library's linen heads (or a subclass), unbound.
    params: its parameters: ``init``'s ``{"params": {...}}`` or the inner
      ``{name: array}`` (boxed ``nn.Partitioned`` values are fine).
    rngs: for :class:`SampledSoftmaxLoss`, the ``nnx.Rngs`` whose ``sampler``
      stream draws the negatives (None: pass ``rngs`` to each training call,
      or use it in ``eval()`` mode). The other heads need no randomness.

  Returns:
    The NNX twin; its methods give the linen head's numbers and gradients.

  Raises:
    TypeError: ``linen_head`` is not a library head.
    ValueError: ``params`` lacks a parameter, has an extra one, or one has
      the wrong shape.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> linen_head = jbs.FullSoftmaxLoss(num_classes=10, features=4)
    >>> x, y = jnp.ones((2, 4)), jnp.array([1, 2])
    >>> variables = linen_head.init(jax.random.key(0), x, y)
    >>> head = jnnx.from_linen(linen_head, variables)
    >>> bool(jnp.allclose(head.nll(x, y), linen_head.apply(variables, x, y, method="nll")))
    True
  """
  twin = next((t for t in _TWINS if isinstance(linen_head, t.linen_class)), None)
  if twin is None:
    raise TypeError(f"linen_head must be one of the linen heads"
                    f" {[t.linen_class.__name__ for t in _TWINS]}; got"
                    f" {type(linen_head).__name__}.")
  linen_head = linen_head.clone(parent=None) if linen_head.scope is not None else linen_head
  fields = tuple(twin.linen_class.__dataclass_fields__)
  fields = [f for f in fields if f not in ("parent", "name")]
  config = {f: getattr(linen_head, f) for f in fields}
  # The configuration and parameter structure without drawing values, then the given values.
  head = nnx.eval_shape(lambda: twin(**config, rngs=nnx.Rngs(0)))
  cfg = head.config
  values = _heads.check_linen_params(cfg.param_specs(), cfg.placement, cfg.param_dtype, params,
                                     type(linen_head).__name__)
  head._init_head(cfg, None, values)
  if isinstance(head, SampledSoftmaxLoss):
    head.use_sampler(rngs)
  subclass = _linen_subclass_twin(twin, type(linen_head))
  if subclass is not None:
    head.__class__ = subclass
    head._linen_module = linen_head
  return head


def to_linen_params(nnx_head: _heads.NNXHead) -> dict[str, Any]:
  """The linen ``params`` of an NNX head: ``head.linen.apply({"params": p}, ...)``.

  Parameters carrying sharding metadata come back boxed (``nn.Partitioned``),
  as the linen head's own ``init`` returns them.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jax_bigsoftmax import nnx as jnnx
    >>> head = jnnx.HSigmoidLoss(feature_size=4, num_classes=10, rngs=nnx.Rngs(0))
    >>> params = jnnx.to_linen_params(head)
    >>> sorted(params), params["weight"].shape
    (['bias', 'weight'], (9, 4))
    >>> x, y = jnp.ones((2, 4)), jnp.array([1, 2])
    >>> bool(jnp.allclose(head.linen.apply({"params": params}, x, y), head(x, y)))
    True
  """
  if not isinstance(nnx_head, _heads.NNXHead):
    raise TypeError(f"nnx_head must be one of the jax_bigsoftmax.nnx heads; got"
                    f" {type(nnx_head).__name__}.")
  return _heads.linen_params(nnx_head, nnx_head.param_names)
