"""The adaptive-softmax head: its configuration, parameters and pure methods.

The linen (:mod:`._linen`) and NNX (:mod:`._nnx`) modules are shells over
:class:`AdaptiveSoftmax`. On one device the methods are the functional
kernels of :mod:`._functional` (tail clusters on padded gathers of their
rows). In a vocabulary-sharded head the head matrix and every tail output
matrix are split on their class (last) axis, and each of them is a linear
softmax over its own classes: the target log-probability is
``-(CE_head + CE_tail)`` with the vocabulary-parallel cross-entropy of
:class:`~jax_bigsoftmax._core.linear.LinearSoftmax` (the projections
``[D, hsz_i]`` are small and replicated). This keeps the parameter names and
shapes of the unsharded head, so one checkpoint serves both.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.heads import ParamSpec
from jax_bigsoftmax._core.linear import LinearSoftmax
from jax_bigsoftmax._core.walk import CHUNK_ELEMENTS
from jax_bigsoftmax._core.sharding import PAD_LOGIT, constrain_vocab_sharded, head_placement, pad_vocab
from jax_bigsoftmax.adaptive import _functional as _adaptive

_IGNORE = -100


class ASMOutput(NamedTuple):
  """``(output, loss)`` as returned by torch's ``AdaptiveLogSoftmaxWithLoss``.

  Attributes:
    output: ``[...]`` target log-probability of each example.
    loss: scalar, ``mean(-output)`` over the non-ignored examples.
  """

  output: jax.Array
  loss: jax.Array


def _torch_uniform(fan_in: int):
  """torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def adaptive_cutoffs(
    in_features: int, n_classes: int, cutoffs: Sequence[int], div_value: float
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """torch's constructor checks; returns (full boundaries, hidden sizes)."""
  for name, v in (("in_features", in_features), ("n_classes", n_classes)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive int; got {v!r}.")
  try:
    cut = list(cutoffs)
  except TypeError:
    raise TypeError(
        f"cutoffs must be a sequence of ints; got {type(cutoffs).__name__}."
    ) from None
  if not cut:
    raise ValueError(
        "cutoffs should be a sequence of length larger than 0; got []."
    )
  try:
    ints = all(int(c) == c and not isinstance(c, bool) for c in cut)
  except (TypeError, ValueError):
    ints = False
  if (
      not ints
      or cut != sorted(cut)
      or min(cut) <= 0
      or max(cut) > n_classes - 1
      or len(set(cut)) != len(cut)
  ):
    raise ValueError(
        "cutoffs should be a sequence of unique, positive integers sorted in"
        " an increasing order, where each value is between 1 and"
        f" n_classes-1={n_classes - 1}; got {cut}."
    )
  div_value = _checks.check_div_value(div_value)
  bounds = tuple(int(c) for c in cut) + (int(n_classes),)
  hsz = []
  for i in range(len(cut)):
    h = int(in_features // (div_value ** (i + 1)))
    if h < 1:
      raise ValueError(
          f"tail cluster {i} would have hidden size in_features // div_value**"
          f"{i + 1} = {in_features} // {div_value}**{i + 1} = {h}; it must be"
          " >= 1: use fewer cutoffs, a smaller div_value or more in_features."
      )
    hsz.append(h)
  return bounds, tuple(hsz)



@dataclasses.dataclass(frozen=True)
class AdaptiveSoftmax:
  """Configuration of :class:`jax_bigsoftmax.AdaptiveLogSoftmaxWithLoss` (its keywords),
  checked once."""

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

  def __post_init__(self):
    bounds, hsz = adaptive_cutoffs(self.in_features, self.n_classes, self.cutoffs,
                                   self.div_value)
    placement = head_placement(self.mesh, self.vocab_axis, self.data_axis)
    object.__setattr__(self, "cutoffs", tuple(int(c) for c in self.cutoffs))
    if isinstance(self.capacity, Sequence):
      object.__setattr__(self, "capacity", tuple(self.capacity))
    object.__setattr__(self, "bounds", bounds)
    object.__setattr__(self, "hidden_sizes", hsz)
    object.__setattr__(self, "placement", placement)
    # In a sharded head every piece (the head and each tail) is its own vocabulary walk,
    # and XLA keeps their chunk buffers apart: the pieces share one walk's chunk budget.
    budget = CHUNK_ELEMENTS // (1 + len(hsz))
    object.__setattr__(self, "ops", LinearSoftmax(placement, chunk_elements=budget))

  def param_specs(self) -> dict[str, ParamSpec]:
    d, bounds, hsz = self.in_features, self.bounds, self.hidden_sizes
    h = bounds[0] + len(hsz)
    # Class axes are split over vocab_axis where they divide by its size.
    specs = {"head_weight": ParamSpec((d, h), _torch_uniform(d), 1, must_divide=False)}
    if self.head_bias:
      specs["head_bias"] = ParamSpec((h,), _torch_uniform(d), 0, must_divide=False)
    for i, hs in enumerate(hsz):
      osz = bounds[i + 1] - bounds[i]
      specs[f"tail_{i}_proj"] = ParamSpec((d, hs), _torch_uniform(d))
      specs[f"tail_{i}_out"] = ParamSpec((hs, osz), _torch_uniform(hs), 1, must_divide=False)
    return specs

  def _args(self, params):
    tails = [(params[f"tail_{i}_proj"], params[f"tail_{i}_out"])
             for i in range(len(self.hidden_sizes))]
    return params["head_weight"], tails, params.get("head_bias")

  # --- the head interface -------------------------------------------------------

  def loss(self, params, input, target) -> ASMOutput:  # noqa: A002
    """Target log-probabilities ``[...]`` and the mean NLL (torch's forward)."""
    w, tails, b = self._args(params)
    if self.placement is not None:
      out = self._sharded_target_logprob(params, input, target, None)
      return ASMOutput(out, -jnp.mean(out))
    out, loss = _adaptive.adaptive_log_softmax_with_loss(input, target, w, tails, self.bounds, b,
                                                         capacity=self.capacity)
    return ASMOutput(out, loss)

  def nll(self, params, x, labels, *, ignore_index: int | None = -100, mask=None):
    """Per-token negative log-likelihood ``[...]`` (0 at ``ignore_index`` or ``mask == False``)."""
    if mask is not None:
      if jnp.shape(mask) != jnp.shape(labels):
        raise ValueError(f"mask must have the shape of labels {jnp.shape(labels)}; got"
                         f" {jnp.shape(mask)}.")
      _checks.check_integer("labels", labels)
      fill = -1 if ignore_index is None else ignore_index
      _checks.check_ignore_index(fill, labels)
      labels = jnp.where(jnp.asarray(mask, bool), _checks.as_index(labels), fill)
      ignore_index = fill
    if self.placement is not None:
      return -self._sharded_target_logprob(params, x, labels, ignore_index)
    w, tails, b = self._args(params)
    out, _ = _adaptive.adaptive_log_softmax_with_loss(x, labels, w, tails, self.bounds, b,
                                                      capacity=self.capacity,
                                                      ignore_index=ignore_index)
    return -out

  def log_prob(self, params, x):
    """Log-probabilities of all classes, ``[..., n_classes]`` (sharded on them when the head is)."""
    w, tails, b = self._args(params)
    if self.placement is None:
      return _adaptive.adaptive_log_prob(x, w, tails, self.bounds, b)
    x = self._check_input(x)
    shortlist = self.bounds[0]
    (hw, hb), outs = self._pieces(w, tails, b)
    head = self.ops.log_softmax(x, hw, hb)
    parts = [head[..., :shortlist]]
    for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
      tail = self.ops.log_softmax(jnp.dot(x, proj.astype(x.dtype)), ow, ob)
      osz = self.bounds[i + 1] - self.bounds[i]
      parts.append(tail[..., :osz] + head[..., shortlist + i, None])
    return constrain_vocab_sharded(jnp.concatenate(parts, axis=-1), self.placement)

  def predict(self, params, x):
    """Arg-max class ``[...]`` (exact): the best shortlist word against each cluster's best
    word (:func:`~jax_bigsoftmax.adaptive._functional.best_of_clusters`)."""
    w, tails, b = self._args(params)
    if self.placement is None:
      return _adaptive.adaptive_predict(x, w, tails, self.bounds, b, capacity=None)
    x = self._check_input(x)
    shortlist = self.bounds[0]
    (hw, hb), outs = self._pieces(w, tails, b)
    # The shortlist's best word: the head's arg-max with the cluster tokens masked out.
    masked_b = jnp.where(jnp.arange(hw.shape[0]) < shortlist, hb, PAD_LOGIT).astype(hw.dtype)
    short_id, short_best, _ = self.ops.argmax_stats(x, hw, masked_b)
    _, _, head_lse = self.ops.argmax_stats(x, hw, hb)
    acc = _checks.compute_dtype(x, w)
    cluster_logit = jnp.dot(x, w[:, shortlist:].astype(x.dtype), preferred_element_type=acc)
    if b is not None:
      cluster_bias = b[shortlist:].astype(acc)
      cluster_logit = cluster_logit + cluster_bias.reshape((1,) * (cluster_logit.ndim - 1) + (-1,))
    tail_ids, tail_lp = [], []
    for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
      tid, tbest, tlse = self.ops.argmax_stats(jnp.dot(x, proj.astype(x.dtype)), ow, ob)
      tail_ids.append(tid)
      tail_lp.append(cluster_logit[..., i] - head_lse + tbest - tlse)
    return _adaptive.best_of_clusters(short_id, short_best - head_lse, tail_ids, tail_lp,
                                      self.bounds)

  # --- the vocabulary-sharded pieces --------------------------------------------

  def _check_input(self, x):
    x = jnp.asarray(x)
    _checks.check_floating("input", x)
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != self.in_features:
      raise ValueError(f"input must be [..., {self.in_features}]; got {jnp.shape(x)}.")
    return x

  def _pieces(self, head_w, tails, head_b):
    """Transposed ``(weight [K, d], bias [K])`` of the head and every tail, padded to a
    multiple of the axis size where they do not divide by it (then replicated)."""
    p = self.placement.num_shards
    head = pad_vocab(head_w.T, head_b, p, force_bias=True)
    return head, [pad_vocab(out.T, None, p, force_bias=True) for _, out in tails]

  def _sharded_target_logprob(self, params, x, labels, ignore_index):
    """Target log-probability ``[...]`` (0 at ``ignore_index``, NaN out of range)."""
    x = self._check_input(x)
    _checks.check_integer("target", labels)
    if jnp.shape(x)[:-1] != jnp.shape(labels):
      raise ValueError(f"input must be [..., {self.in_features}] and target [...] with the same"
                       f" leading dims; got {jnp.shape(x)} and {jnp.shape(labels)}.")
    bounds = self.bounds
    _checks.check_labels_in_range(labels, bounds[-1], name="target", ignore_index=ignore_index)
    labels = _checks.as_index(labels)
    w, tails, b = self._args(params)
    shortlist = bounds[0]
    ignored = (jnp.zeros(labels.shape, bool) if ignore_index is None
               else labels == ignore_index)
    bad = ~ignored & ((labels < 0) | (labels >= bounds[-1]))
    skip = ignored | bad
    # Range masks on the labels' own width, then int32 ids.
    cluster = sum((labels >= lo).astype(jnp.int32) for lo in bounds[:-1])  # 0: shortlist
    labels = _checks.saturate_int32(jnp.where(skip, 0, labels))
    head_ids = jnp.where(cluster == 0, labels, shortlist + cluster - 1)
    (hw, hb), outs = self._pieces(w, tails, b)
    ce = lambda x, w, b, y: self.ops.cross_entropy(x, w, b, y, ignore_index=_IGNORE,
                                                   validate=False)
    nll = ce(x, hw, hb, jnp.where(skip, _IGNORE, head_ids))
    for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
      h = jnp.dot(x, proj.astype(x.dtype))
      rel = jnp.where(~skip & (cluster == i + 1), labels - bounds[i], _IGNORE)
      nll = nll + ce(h, ow, ob, rel)
    return jnp.where(bad, jnp.nan, -nll)
