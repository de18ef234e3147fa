"""Flax head for adaptive softmax, and converters from torch / Paddle weights."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_bigsoftmax import _adaptive
from jax_bigsoftmax import _checks
from jax_bigsoftmax import _sharded_heads


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


class AdaptiveLogSoftmaxWithLoss(nn.Module):
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

  def setup(self):
    shard = _sharded_heads.vocab_partitioner(self)
    bounds, hsz = adaptive_cutoffs(
        self.in_features, self.n_classes, self.cutoffs, self.div_value
    )
    d, h = self.in_features, bounds[0] + len(hsz)
    self._bounds = bounds
    # Class axes carry partitioning metadata with vocab_axis (where they divide by it).
    head_init = shard(_torch_uniform(d), (d, h), 1, name="head_weight", required=False)
    self._head_w = self.param("head_weight", head_init, (d, h), self.param_dtype)
    bias_init = shard(_torch_uniform(d), (h,), 0, name="head_bias", required=False)
    self._head_b = (
        self.param("head_bias", bias_init, (h,), self.param_dtype)
        if self.head_bias else None
    )
    tails = []
    for i, hs in enumerate(hsz):
      osz = bounds[i + 1] - bounds[i]
      proj = self.param(f"tail_{i}_proj", _torch_uniform(d), (d, hs), self.param_dtype)
      out_init = shard(_torch_uniform(hs), (hs, osz), 1, name=f"tail_{i}_out", required=False)
      out = self.param(f"tail_{i}_out", out_init, (hs, osz), self.param_dtype)
      tails.append((proj, out))
    self._tails = tails

  def _args(self):
    return self._head_w, [tuple(t) for t in self._tails], self._bounds, self._head_b

  def __call__(self, input: jax.Array, target: jax.Array) -> ASMOutput:
    """Target log-probabilities ``[...]`` and the mean NLL (torch's forward)."""
    w, tails, bounds, b = self._args()
    if self.vocab_axis is not None:
      out = self._sharded_logprob(input, target, None)
      return ASMOutput(out, -jnp.mean(out))
    out, loss = _adaptive.adaptive_log_softmax_with_loss(
        input, target, w, tails, bounds, b, capacity=self.capacity
    )
    return ASMOutput(out, loss)

  def _sharded_logprob(self, x, labels, ignore_index):
    w, tails, bounds, b = self._args()
    x = jnp.asarray(x)
    _checks.check_floating("input", x)
    _checks.check_integer("target", labels)
    if jnp.shape(x)[:-1] != jnp.shape(labels) or jnp.shape(x)[-1] != self.in_features:
      raise ValueError(f"input must be [..., {self.in_features}] and target [...] with the same"
                       f" leading dims; got {jnp.shape(x)} and {jnp.shape(labels)}.")
    _checks.check_labels_in_range(labels, bounds[-1], name="target", ignore_index=ignore_index)
    return _sharded_heads.adaptive_target_logprob(self, x, labels, w, tails, bounds, b,
                                                  ignore_index)

  def nll(
      self,
      x: jax.Array,
      labels: jax.Array,
      *,
      ignore_index: int | None = -100,
      mask: jax.Array | None = None,
  ) -> jax.Array:
    """Per-token negative log-likelihood ``[...]``.

    Positions with ``labels == ignore_index`` or ``mask == False`` give 0 (with
    zero gradient); the tails never see them. Sum and divide by the number of
    kept tokens for a padded-batch mean.
    """
    if mask is not None:
      if jnp.shape(mask) != jnp.shape(labels):
        raise ValueError(
            f"mask must have the shape of labels {jnp.shape(labels)}; got"
            f" {jnp.shape(mask)}."
        )
      _checks.check_integer("labels", labels)
      fill = -1 if ignore_index is None else ignore_index
      _checks.check_ignore_index(fill, labels)
      labels = jnp.where(jnp.asarray(mask, bool), _checks.as_index(labels), fill)
      ignore_index = fill
    if self.vocab_axis is not None:
      return -self._sharded_logprob(x, labels, ignore_index)
    w, tails, bounds, b = self._args()
    out, _ = _adaptive.adaptive_log_softmax_with_loss(
        x, labels, w, tails, bounds, b, capacity=self.capacity,
        ignore_index=ignore_index,
    )
    return -out

  def log_prob(self, x: jax.Array) -> jax.Array:
    """Log-probabilities of all classes, ``[..., n_classes]``."""
    w, tails, bounds, b = self._args()
    if self.vocab_axis is not None:
      return _sharded_heads.adaptive_log_prob(self, jnp.asarray(x), w, tails, bounds, b)
    return _adaptive.adaptive_log_prob(x, w, tails, bounds, b)

  def predict(self, x: jax.Array) -> jax.Array:
    """Arg-max class ``[...]`` (torch's shortcut; exact)."""
    w, tails, bounds, b = self._args()
    if self.vocab_axis is not None:
      return _sharded_heads.adaptive_predict(self, jnp.asarray(x), w, tails, bounds, b)
    return _adaptive.adaptive_predict(x, w, tails, bounds, b, capacity=None)


# ----------------------------------------------------------------------------
# Interop.
# ----------------------------------------------------------------------------


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a mapping of names to arrays; got"
        f" {type(state_dict).__name__}."
    )
  out = {}
  for k, v in state_dict.items():
    if k.startswith(prefix):
      out[k[len(prefix):]] = np.asarray(v)
  return out


def _tail_indices(keys, pattern_prefix: str) -> list[int]:
  idx = set()
  for k in keys:
    if k.startswith(pattern_prefix):
      head = k[len(pattern_prefix):].split(".")[0]
      if head.isdigit():
        idx.add(int(head))
  ids = sorted(idx)
  if ids != list(range(len(ids))):
    raise ValueError(
        f"state_dict tail entries {pattern_prefix}<i> must be numbered 0..n-1;"
        f" got {ids}."
    )
  return ids


def _need(sd: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
  if key not in sd:
    raise ValueError(
        f"state_dict has no entry {key!r}; keys present: {sorted(sd)}."
    )
  v = sd[key]
  if v.ndim != ndim:
    raise ValueError(f"state_dict[{key!r}] must have rank {ndim}; got shape {v.shape}.")
  return v


def _finish(params: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  d, h = params["head_weight"].shape
  n_tail = sum(k.endswith("_proj") for k in params)
  if "head_bias" in params and params["head_bias"].shape != (h,):
    raise ValueError(f"head bias must have shape ({h},); got {params['head_bias'].shape}.")
  for i in range(n_tail):
    p, o = params[f"tail_{i}_proj"], params[f"tail_{i}_out"]
    if p.shape[0] != d or o.shape[0] != p.shape[1]:
      raise ValueError(
          f"tail {i}: projection {p.shape} and output {o.shape} do not chain"
          f" from in_features={d}."
      )
  return {k: jnp.asarray(v) for k, v in params.items()}


def adaptive_params_from_torch(
    state_dict: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, jax.Array]:
  """Params of :class:`AdaptiveLogSoftmaxWithLoss` from a torch state dict.

  Maps ``head.weight [H, D]`` -> ``head_weight [D, H]``, ``head.bias`` ->
  ``head_bias``, ``tail.{i}.0.weight [hsz, D]`` -> ``tail_{i}_proj [D, hsz]``
  and ``tail.{i}.1.weight [osz, hsz]`` -> ``tail_{i}_out [hsz, osz]``.

  Args:
    state_dict: ``{name: numpy array}``, e.g. ``{k: v.numpy() for k, v in
      m.state_dict().items()}``.
    prefix: leading part of the keys to strip (e.g. ``"decoder.asm."``).

  Returns:
    The ``params`` collection: ``module.apply({"params": p}, x, y)``.
  """
  sd = _strip(state_dict, prefix)
  params = {"head_weight": _need(sd, "head.weight", 2).T}
  if "head.bias" in sd:
    params["head_bias"] = _need(sd, "head.bias", 1)
  for i in _tail_indices(sd, "tail."):
    params[f"tail_{i}_proj"] = _need(sd, f"tail.{i}.0.weight", 2).T
    params[f"tail_{i}_out"] = _need(sd, f"tail.{i}.1.weight", 2).T
  return _finish(params)


def adaptive_params_from_paddle(
    state_dict: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, jax.Array]:
  """Params of :class:`AdaptiveLogSoftmaxWithLoss` from Paddle weights.

  Paddle's layouts are ours: ``head_weight [D, H]``, ``head_bias [H]``, and
  ``tail_weights.{i}.0 [D, hsz]`` / ``tail_weights.{i}.1 [hsz, osz]``.
  Paddle 3.x keeps the tail weights in a plain Python list, so
  ``layer.state_dict()`` holds only the head; add the tails yourself::

    sd = {k: v.numpy() for k, v in layer.state_dict().items()}
    sd |= {f"tail_weights.{i}.{j}": w.numpy()
           for i, pair in enumerate(layer.tail_weights)
           for j, w in enumerate(pair)}

  (A ``"tail_weights"`` entry holding the nested list of pairs also works.)

  Args:
    state_dict: ``{name: numpy array}`` as above.
    prefix: leading part of the keys to strip.

  Returns:
    The ``params`` collection: ``module.apply({"params": p}, x, y)``.
  """
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a mapping of names to arrays; got"
        f" {type(state_dict).__name__}."
    )
  raw = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  pairs = raw.pop("tail_weights", ())
  for i, pair in enumerate(pairs):
    for j, w in enumerate(pair):
      raw[f"tail_weights.{i}.{j}"] = w
  sd = {k: np.asarray(v) for k, v in raw.items() if v is not None}
  params = {"head_weight": _need(sd, "head_weight", 2)}
  if "head_bias" in sd:
    params["head_bias"] = _need(sd, "head_bias", 1)
  for i in _tail_indices(sd, "tail_weights."):
    params[f"tail_{i}_proj"] = _need(sd, f"tail_weights.{i}.0", 2)
    params[f"tail_{i}_out"] = _need(sd, f"tail_weights.{i}.1", 2)
  return _finish(params)
