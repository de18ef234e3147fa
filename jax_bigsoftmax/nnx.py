"""Flax NNX heads: ``flax.nnx`` twins of the library's four linen heads.

Each NNX head takes the same configuration keywords as its linen twin plus
``rngs: nnx.Rngs``, holds the same parameters (same names, shapes and
layouts, as ``nnx.Param`` attributes: ``head.weight``, ``head.tail_0_proj``)
and has the common head interface ``__call__(x, labels)``, ``nll``,
``log_prob`` and ``predict``.

One implementation serves both APIs. The linen head is the *spec* both twins
read: an NNX head keeps its (unbound, hashable, static) linen twin as
``head.linen``; the linen ``setup`` validates the configuration and declares
the parameter shapes and initialisers, and the linen methods call the pure
functions of the library. The NNX head runs that setup once, at construction,
to create its ``nnx.Param``s (the same values the linen ``init`` gives for the
same key), and every method applies the linen method to the current parameter
values. So every option of a linen head (including later additions such as
sharding and the exact-head options) is an option of its NNX twin, with the
same numbers and gradients, and nothing is written twice.

Sharding metadata: a linen parameter declared with ``nn.with_partitioning``
becomes an ``nnx.Param`` with the same ``out_sharding`` names and ``mesh``
(what ``nnx.with_partitioning`` would give; a head's ``mesh`` attribute fills
in a missing mesh), so ``nnx.get_partition_spec`` works on the NNX head.
Initialisers passed to an NNX head are its linen twin's: annotate them with
``flax.linen.with_partitioning``.

Migration: :func:`from_linen` builds the NNX head of a linen head and its
params; :func:`to_linen_params` gives back the linen ``params``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from jax.typing import ArrayLike

from jax_bigsoftmax import _nnx_head
from jax_bigsoftmax._adaptive_head import AdaptiveLogSoftmaxWithLoss as _LinenAdaptive
from jax_bigsoftmax._adaptive_head import ASMOutput
from jax_bigsoftmax._full_head import FullSoftmaxLoss as _LinenFull
from jax_bigsoftmax._hsigmoid_head import HSigmoidLoss as _LinenHSigmoid
from jax_bigsoftmax._sampled_head import SampledSoftmaxLoss as _LinenSampled

__all__ = (
    "AdaptiveLogSoftmaxWithLoss",
    "FullSoftmaxLoss",
    "HSigmoidLoss",
    "SampledSoftmaxLoss",
    "from_linen",
    "to_linen_params",
)

_RngArg = nnx.Rngs | nnx.RngStream | jax.Array | None


class _ExactSoftmaxMethods:
  """``nll``, ``log_prob`` and ``predict`` of a head over one ``[V, D]`` weight
  (the full and the sampled head: both are exact outside training)."""

  def nll(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Exact per-token ``-log p(label | x)`` ``[...]`` (0 at ``ignore_index``)."""
    return self._apply("nll", inputs, labels)

  def log_prob(self, inputs: ArrayLike) -> jax.Array:
    """``[..., V]`` exact log-probabilities."""
    return self._apply("log_prob", inputs)

  def predict(self, inputs: ArrayLike) -> jax.Array:
    """``[...]`` arg-max class."""
    return self._apply("predict", inputs)


class FullSoftmaxLoss(_ExactSoftmaxMethods, _nnx_head.Head):
  """NNX twin of :class:`jax_bigsoftmax.FullSoftmaxLoss` (exact softmax head).

  Same keywords (``num_classes``, ``features``, ``use_bias``, ``ignore_index``,
  ``label_smoothing``, ``reduction``, ``chunk_size``, ``dtype``,
  ``param_dtype``, ``weight_init``, and any option the linen head has) plus
  ``rngs``. Params: ``weight`` ``[num_classes, features]``, ``bias``
  ``[num_classes]``.

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

  linen_class = _LinenFull

  def __call__(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """The training loss (the head's ``reduction`` and ``label_smoothing``)."""
    return self._apply("__call__", inputs, labels)


class AdaptiveLogSoftmaxWithLoss(_nnx_head.Head):
  """NNX twin of :class:`jax_bigsoftmax.AdaptiveLogSoftmaxWithLoss` (torch's layer).

  Same arguments (``in_features, n_classes, cutoffs, div_value=4.0,
  head_bias=False``, ``capacity``, ``param_dtype``) plus ``rngs``; the same
  torch validation errors. Params (Paddle layouts): ``head_weight``
  ``[D, shortlist + n_clusters]``, ``head_bias``, ``tail_{i}_proj``
  ``[D, hsz_i]``, ``tail_{i}_out`` ``[hsz_i, osz_i]``.

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

  def __call__(self, input: ArrayLike, target: ArrayLike) -> ASMOutput:  # noqa: A002
    """``ASMOutput(output [...], loss)``: target log-probabilities and their mean NLL."""
    return self._apply("__call__", input, target)

  def nll(self, x: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = -100,
          mask: ArrayLike | None = None) -> jax.Array:
    """Per-token NLL ``[...]``; 0 where ``labels == ignore_index`` or ``mask`` is False."""
    return self._apply("nll", x, labels, ignore_index=ignore_index, mask=mask)

  def log_prob(self, x: ArrayLike) -> jax.Array:
    """``[..., n_classes]`` log-probabilities."""
    return self._apply("log_prob", x)

  def predict(self, x: ArrayLike) -> jax.Array:
    """``[...]`` exact arg-max class."""
    return self._apply("predict", x)


class HSigmoidLoss(_nnx_head.Head):
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

  linen_class = _LinenHSigmoid

  def __call__(self, input: ArrayLike, label: ArrayLike,  # noqa: A002
               path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """Paddle's loss ``[..., 1]`` (its quirks with ``paddle_compat``)."""
    return self._apply("__call__", input, label, path_table, path_code)

  def nll(self, x: ArrayLike, labels: ArrayLike, path_table: ArrayLike | None = None,
          path_code: ArrayLike | None = None) -> jax.Array:
    """Exact per-token ``-log p(label | x)`` ``[...]``."""
    return self._apply("nll", x, labels, path_table, path_code)

  def log_prob(self, x: ArrayLike, path_table: ArrayLike | None = None,
               path_code: ArrayLike | None = None) -> jax.Array:
    """``[..., V]`` log-probabilities (custom tree: per-class tables ``[V, L]``)."""
    return self._apply("log_prob", x, path_table, path_code)

  def predict(self, x: ArrayLike, path_table: ArrayLike | None = None,
              path_code: ArrayLike | None = None) -> jax.Array:
    """``[...]`` arg-max class by tree search."""
    return self._apply("predict", x, path_table, path_code)


class SampledSoftmaxLoss(_ExactSoftmaxMethods, _nnx_head.Head):
  """NNX twin of :class:`jax_bigsoftmax.SampledSoftmaxLoss` (sampled in training, exact in eval).

  Same arguments (``num_classes, features, num_sampled, num_true=1,
  remove_accidental_hits=True``, ``ignore_index``, ``dtype``,
  ``param_dtype``, ``weight_init``) plus ``rngs`` and ``deterministic``.
  Params: ``weight`` ``[num_classes, features]``, ``bias`` ``[num_classes]``.

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

  linen_class = _LinenSampled

  def __init__(self, *args: Any, rngs: nnx.Rngs | None = None,
               deterministic: bool = False, **kwargs: Any):
    super().__init__(*args, rngs=rngs, **kwargs)
    self.deterministic = deterministic
    has_stream = isinstance(rngs, nnx.Rngs) and any(s in ("sampler", "default") for s in rngs)
    self.rngs = rngs["sampler"].fork() if has_stream else nnx.data(None)

  def set_view(self, deterministic: bool | None = None):
    """Used by ``nnx.view``: ``deterministic=True`` gives the exact loss."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _sampler_key(self, rngs: _RngArg) -> jax.Array:
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
      return rngs["sampler"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      return rngs
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
    if deterministic:
      return self._apply("__call__", inputs, labels, deterministic=True)
    return self._apply("__call__", inputs, labels, deterministic=False,
                       rngs={"sampler": self._sampler_key(rngs)})


_TWINS: tuple[type[_nnx_head.Head], ...] = (
    FullSoftmaxLoss, AdaptiveLogSoftmaxWithLoss, HSigmoidLoss, SampledSoftmaxLoss)


def from_linen(linen_head: nn.Module, params: Mapping[str, Any], *,
               rngs: nnx.Rngs | None = None) -> _nnx_head.Head:
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
  spec = linen_head.clone(parent=None) if linen_head.scope is not None else linen_head
  values = _nnx_head.params_from_linen(spec, params)
  if twin is SampledSoftmaxLoss:
    return twin(_nnx_head.FromLinen(spec, values), rngs=rngs)
  return twin(_nnx_head.FromLinen(spec, values))


def to_linen_params(nnx_head: _nnx_head.Head) -> dict[str, Any]:
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
  if not isinstance(nnx_head, _nnx_head.Head):
    raise TypeError(f"nnx_head must be one of the jax_bigsoftmax.nnx heads; got"
                    f" {type(nnx_head).__name__}.")
  return _nnx_head.linen_params(nnx_head)
