"""Adaptive softmax (Grave et al. 2016): torch/Paddle-exact, static shapes.

The vocabulary, sorted by frequency, is split by ``cutoffs = [c0, c1, ...,
n_classes]`` into a *shortlist* ``[0, c0)`` scored by the head together with
one "cluster token" per tail cluster, and tail clusters ``[c_i, c_{i+1})``
scored by a low-rank projection ``x @ proj_i @ out_i``::

  log p(y | x) = log_softmax(x @ W_head + b)[y]                    y < c0
  log p(y | x) = log_softmax(x @ W_head + b)[c0 + i]
               + log_softmax(x @ proj_i @ out_i)[y - c_i]        c_i <= y < c_{i+1}

Layouts follow ``paddle.nn.functional.adaptive_log_softmax_with_loss``:
``head_weight`` ``[D, c0 + n_clusters]``, ``tail_weights[i] = (proj [D, hsz_i],
out [hsz_i, osz_i])``.

Static shapes under ``jit``: a tail cluster is only evaluated on the rows whose
target falls in it. Those rows are gathered (their indices sorted to the front
with ``jnp.nonzero(size=...)``) and processed in blocks by a few
``while_loop`` levels: blocks of ``capacity`` rows, then of ``capacity/8``,
``capacity/64``, ... (>= 16 rows) for the remainder, so a cluster with ``k``
targets costs ``k`` rows plus less than one smallest block of padding, a cluster
with no target costs a few scalar compares, and an overflowing cluster simply
runs more blocks: results are exact for every batch. The backward pass is a ``custom_vjp`` that
walks the same blocks (recomputing the tail logits), so memory stays
``O(capacity * osz)`` per cluster.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.sharding import varying_like as _varying_like

_MIN_BLOCK = 16
_LEVEL_FACTOR = 8
# Default capacity: the largest power of two with one block's [rows, osz] float32
# logits <= 8 MiB, so a block's logits stay in cache while they are reduced (the
# trade-off is in docs/benchmarks.md), but at least 128 rows so a very wide cluster
# does not re-accumulate its [hsz, osz] gradient once per handful of rows.
_BLOCK_BUDGET = 1 << 21
_MIN_DEFAULT_CAPACITY = 128


# ----------------------------------------------------------------------------
# Static validation.
# ----------------------------------------------------------------------------


def _as_int_list(name: str, values: Any) -> list[int]:
  if isinstance(values, (str, bytes)):
    raise TypeError(f"{name} must be a sequence of integers; got {values!r}.")
  try:
    items = list(values)
  except TypeError:
    raise TypeError(
        f"{name} must be a sequence of integers; got {type(values).__name__}."
    ) from None
  out = []
  for c in items:
    if _checks.is_traced(c):
      raise TypeError(
          f"{name} must be static Python integers (they fix array shapes);"
          " got a traced value."
      )
    try:
      ok = int(c) == c
    except (TypeError, ValueError):
      ok = False
    if not ok or isinstance(c, bool):
      raise ValueError(f"{name} must contain integers; got {items}.")
    out.append(int(c))
  return out


def full_cutoffs(cutoffs: Any, tail_weights: Sequence[Any]) -> tuple[int, ...]:
  """Validates ``cutoffs`` and returns the full boundary list.

  ``cutoffs`` is Paddle's full list ``[c0, ..., n_classes]`` (one entry more
  than ``tail_weights``), or torch's constructor list without ``n_classes``
  (as many entries as ``tail_weights``; Paddle's own docstring example passes
  this form); ``n_classes`` is then ``c_last + osz_last``.
  """
  vals = _as_int_list("cutoffs", cutoffs)
  n_tail = len(tail_weights)
  if len(vals) == n_tail and n_tail >= 1:
    vals = vals + [vals[-1] + int(jnp.shape(tail_weights[-1][1])[-1])]
  elif len(vals) != n_tail + 1:
    raise ValueError(
        f"cutoffs must be the {n_tail + 1} cluster boundaries [shortlist, ...,"
        f" n_classes] for len(tail_weights)={n_tail} tail clusters; got"
        f" {vals} ({len(vals)} values)."
    )
  if vals[0] <= 0 or any(b <= a for a, b in zip(vals, vals[1:])):
    raise ValueError(
        "cutoffs must be positive, unique and sorted in increasing order;"
        f" got {vals}."
    )
  return tuple(vals)


def _check_params(
    head_weight: Any,
    tail_weights: Sequence[Any],
    bounds: tuple[int, ...],
    head_bias: Any,
    d: int,
) -> None:
  n_tail = len(bounds) - 1
  _checks.check_floating("head_weight", head_weight)
  _checks.check_shape(
      "head_weight", head_weight, (d, bounds[0] + n_tail),
      f"[in_features, shortlist + n_clusters] for cutoffs {list(bounds)}",
  )
  if head_bias is not None:
    _checks.check_floating("head_bias", head_bias)
    _checks.check_shape("head_bias", head_bias, (bounds[0] + n_tail,))
  for i, pair in enumerate(tail_weights):
    if not isinstance(pair, Sequence) or len(pair) != 2:
      raise ValueError(
          f"tail_weights[{i}] must be a pair (proj [D, hsz], out [hsz, osz]);"
          f" got {type(pair).__name__}"
          + (f" of length {len(pair)}" if isinstance(pair, Sequence) else "")
          + "."
      )
    proj, out = pair
    _checks.check_floating(f"tail_weights[{i}][0]", proj)
    _checks.check_floating(f"tail_weights[{i}][1]", out)
    _checks.check_ndim(f"tail_weights[{i}][0]", proj, ndim=2)
    hsz = jnp.shape(proj)[1]
    _checks.check_shape(f"tail_weights[{i}][0]", proj, (d, hsz), "[D, hsz]")
    _checks.check_shape(
        f"tail_weights[{i}][1]", out, (hsz, bounds[i + 1] - bounds[i]),
        f"[hsz, cutoffs[{i + 1}] - cutoffs[{i}]]",
    )


def _capacities(capacity: Any, bounds: tuple[int, ...], n: int) -> tuple[int, ...]:
  n_tail = len(bounds) - 1
  if capacity is None:
    return tuple(_default_capacity(bounds[i + 1] - bounds[i], n) for i in range(n_tail))
  if isinstance(capacity, (int, np.integer)) and not isinstance(capacity, bool):
    capacity = [capacity] * n_tail
  caps = _as_int_list("capacity", capacity)
  if len(caps) != n_tail or any(c < 1 for c in caps):
    raise ValueError(
        "capacity must be a positive int or one positive int per tail cluster"
        f" ({n_tail}); got {capacity!r}."
    )
  return tuple(caps)


def _next_pow2(n: int) -> int:
  return 1 << (n - 1).bit_length()


def _default_capacity(width: int, n: int) -> int:
  """Rows per block for ``width`` logits per row: see ``_BLOCK_BUDGET``."""
  c = max(_MIN_DEFAULT_CAPACITY, 1 << max(0, (_BLOCK_BUDGET // width).bit_length() - 1))
  return min(c, _next_pow2(max(n, 1)))


def _prepare(input, label, head_weight, tail_weights, cutoffs, head_bias):
  """Common checks; returns (x_ND, labels_N or None, bounds, lead_shape)."""
  _checks.check_floating("input", input)
  _checks.check_ndim("input", input, min_ndim=1)
  shape = jnp.shape(input)
  if not isinstance(tail_weights, Sequence):
    raise TypeError(
        "tail_weights must be a sequence of (proj, out) pairs; got"
        f" {type(tail_weights).__name__}."
    )
  if shape[-1] < 1:
    raise ValueError(f"input must have at least one feature (shape [..., D] with D >= 1); got"
                     f" shape {tuple(shape)}.")
  bounds = full_cutoffs(cutoffs, tail_weights)
  _check_params(head_weight, tail_weights, bounds, head_bias, shape[-1])
  x = jnp.reshape(jnp.asarray(input), (-1, shape[-1]))
  if label is None:
    return x, None, bounds, shape[:-1]
  _checks.check_integer("label", label)
  _checks.check_batch_match("input", shape, "label", jnp.shape(label))
  # Host labels stay NumPy (int64 not narrowed) until their range is checked;
  # callers then convert them with ``_checks.as_index``.
  label = label if isinstance(label, (jax.Array, jax.core.Tracer)) else np.asarray(label)
  return x, label.reshape(-1), bounds, shape[:-1]


# ----------------------------------------------------------------------------
# Block scheduling over the rows of one cluster.
# ----------------------------------------------------------------------------


def _block_sizes(capacity: int) -> tuple[int, ...]:
  """``capacity, capacity/8, capacity/64, ...`` down to at least 16 rows."""
  sizes = [capacity]
  while sizes[-1] // _LEVEL_FACTOR >= _MIN_BLOCK:
    sizes.append(sizes[-1] // _LEVEL_FACTOR)
  return tuple(sizes)


def _run_blocks(body, carry, count, capacity: int):
  """Calls ``carry = body(carry, start, size)`` over blocks covering ``count``.

  Level ``k`` runs ``floor(left / size_k)`` blocks of ``size_k`` rows in a
  ``while_loop`` (the last level rounds up), with sizes ``capacity,
  capacity/8, ...`` (>= 16): the padding is less than the smallest size and
  only a handful of loop bodies are compiled.
  """
  sizes = _block_sizes(capacity)
  pos = jnp.zeros_like(count)
  for k, size in enumerate(sizes):
    left = count - pos
    n_blocks = (left + size - 1) // size if k == len(sizes) - 1 else left // size

    def loop_body(state, size=size):
      b, start, c = state
      return b + 1, start + size, body(c, start, size)

    init = _varying_like((jnp.zeros_like(count), pos, carry), count, pos, carry)
    _, pos, carry = lax.while_loop(lambda s, n=n_blocks: s[0] < n, loop_body, init)
  return carry


def _rows(order, count, start, size: int):
  """Row indices of one block (``n`` = out of range for padding) and validity."""
  idx = lax.dynamic_slice(order, (start,), (size,))
  valid = start + jnp.arange(size) < count
  return idx, valid


def _gather_order(mask, capacity: int):
  """Indices of the True rows first, padded with ``n`` (one past the end)."""
  n = mask.shape[0]
  (order,) = jnp.nonzero(mask, size=n + capacity, fill_value=n)
  return order.astype(jnp.int32), jnp.sum(mask, dtype=jnp.int32)


def _tail_logits(xg, proj, out, cdt):
  op = jnp.result_type(xg, proj, out)
  h = jnp.dot(xg, proj, preferred_element_type=cdt).astype(op)
  return h, jnp.dot(h, out.astype(op), preferred_element_type=cdt)


# ----------------------------------------------------------------------------
# One tail cluster's target log-probabilities, with a blockwise custom VJP.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cluster_logprob(capacity, x, proj, out, rel, mask):
  """``log_softmax(x @ proj @ out)[rel]`` on rows where ``mask``, else 0."""
  return _cluster_fwd(capacity, x, proj, out, rel, mask)[0]


def _cluster_fwd(capacity, x, proj, out, rel, mask):
  n = x.shape[0]
  cdt = _checks.compute_dtype(x, proj, out)
  order, count = _gather_order(mask, capacity)

  def body(carry, start, size):
    acc, lse_acc = carry
    idx, valid = _rows(order, count, start, size)
    xg = jnp.take(x, idx, axis=0, mode="clip")
    h, z = _tail_logits(xg, proj, out, cdt)
    lse = jax.nn.logsumexp(z, axis=-1)
    r = jnp.take(rel, idx, mode="clip")
    # The target logit as h . out[:, r] rather than a gather from z (with the
    # backward's one-hot change below: a cluster's fwd+bwd alone 14-33% faster
    # on an Intel Xeon; the whole training step within noise).
    picked = jnp.einsum("nk,kn->n", h, jnp.take(out, r, axis=1, mode="clip").astype(h.dtype),
                        preferred_element_type=cdt)
    acc = acc.at[idx].add(jnp.where(valid, picked - lse, 0), mode="drop")
    lse_acc = lse_acc.at[idx].set(lse, mode="drop")
    return acc, lse_acc

  zeros = jnp.zeros((n,), cdt)
  init = _varying_like((zeros, zeros), x, proj, out, rel, mask)
  acc, lse_n = _run_blocks(body, init, count, capacity)
  return acc, (x, proj, out, rel, mask, order, count, lse_n)


def _cluster_bwd(capacity, res, g):
  x, proj, out, rel, mask, order, count, lse_n = res
  cdt = _checks.compute_dtype(x, proj, out)
  g = g.astype(cdt)

  def body(carry, start, size):
    dx, dproj, dout = carry
    idx, valid = _rows(order, count, start, size)
    xg = jnp.take(x, idx, axis=0, mode="clip")
    h, z = _tail_logits(xg, proj, out, cdt)
    lse = jnp.take(lse_n, idx, mode="clip")
    gi = jnp.where(valid, jnp.take(g, idx, mode="clip"), 0)
    r = jnp.clip(jnp.take(rel, idx, mode="clip"), 0, z.shape[1] - 1)
    # dL/dz = g * (onehot(r) - softmax(z)). The one-hot part is added to the two
    # products directly (columns r of dout and of out) rather than scattered
    # into the [rows, osz] block, which XLA:CPU copies first.
    dz = -gi[:, None] * jnp.exp(z - lse[:, None])
    op = h.dtype
    dout = dout + jnp.dot(h.T, dz.astype(op), preferred_element_type=cdt)
    dout = dout.at[:, r].add((gi[:, None] * h.astype(cdt)).T)
    dh = jnp.dot(dz.astype(op), out.astype(op).T, preferred_element_type=cdt)
    dh = dh + gi[:, None] * jnp.take(out, r, axis=1).T.astype(cdt)
    dproj = dproj + jnp.dot(xg.T, dh.astype(op), preferred_element_type=cdt)
    dxg = jnp.dot(dh.astype(op), proj.astype(op).T, preferred_element_type=cdt)
    dx = dx.at[idx].add(dxg, mode="drop")
    return dx, dproj, dout

  init = (
      jnp.zeros(x.shape, cdt), jnp.zeros(proj.shape, cdt),
      jnp.zeros(out.shape, cdt),
  )
  init = _varying_like(init, x, proj, out, rel, mask, g)
  dx, dproj, dout = _run_blocks(body, init, count, capacity)
  return (
      dx.astype(x.dtype), dproj.astype(proj.dtype), dout.astype(out.dtype),
      None, None,
  )


_cluster_logprob.defvjp(_cluster_fwd, _cluster_bwd)


# ----------------------------------------------------------------------------
# Shared pieces.
# ----------------------------------------------------------------------------


def _head_logits(x, head_weight, head_bias, cdt):
  op = jnp.result_type(x, head_weight)
  logits = jnp.dot(x.astype(op), head_weight.astype(op), preferred_element_type=cdt)
  if head_bias is not None:
    logits = logits + head_bias.astype(cdt)[None, :]
  return logits


@functools.partial(jax.jit, static_argnames=("bounds", "caps", "ignore_index"))
def target_logprob(x, labels, head_weight, tail_weights, head_bias, *, bounds, caps,
                   ignore_index):
  """Per-row target log-probability ``[N]`` (0 where ignored, NaN if invalid)."""
  cdt = _checks.compute_dtype(x, head_weight, *[w for p in tail_weights for w in p])
  shortlist, n_classes = bounds[0], bounds[-1]
  ignored = (
      jnp.zeros(labels.shape, bool) if ignore_index is None
      else labels == ignore_index
  )
  bad = ((labels < 0) | (labels >= n_classes)) & ~ignored
  labels = jnp.where(ignored | bad, -1, labels)

  logits = _head_logits(x, head_weight, head_bias, cdt)
  cluster = jnp.searchsorted(jnp.asarray(bounds), labels, side="right")
  head_idx = jnp.where(labels < shortlist, labels, shortlist + cluster - 1)
  head_idx = jnp.clip(head_idx, 0, logits.shape[1] - 1)
  picked = jnp.take_along_axis(logits, head_idx[:, None], axis=-1)[:, 0]
  result = picked - jax.nn.logsumexp(logits, axis=-1)
  # An empty batch (static) has no rows to gather: its tails cost nothing.
  for i, (proj, out) in enumerate(tail_weights if x.shape[0] else ()):
    lo, hi = bounds[i], bounds[i + 1]
    mask = (labels >= lo) & (labels < hi)
    result = result + _cluster_logprob(
        caps[i], x, proj, out, _checks.saturate_int32(labels - lo), mask
    )
  result = jnp.where(ignored, 0, result)
  return jnp.where(bad, jnp.nan, result)


@functools.partial(jax.jit, static_argnames=("bounds",))
def full_log_prob(x, head_weight, tail_weights, head_bias, *, bounds):
  cdt = _checks.compute_dtype(x, head_weight, *[w for p in tail_weights for w in p])
  head_lp = jax.nn.log_softmax(_head_logits(x, head_weight, head_bias, cdt), axis=-1)
  sl = bounds[0]
  parts = [head_lp[:, :sl]]
  for i, (proj, out) in enumerate(tail_weights):
    _, z = _tail_logits(x, proj, out, cdt)
    parts.append(jax.nn.log_softmax(z, axis=-1) + head_lp[:, sl + i, None])
  return jnp.concatenate(parts, axis=-1)


# ----------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------


def adaptive_log_softmax_with_loss(
    input: jax.typing.ArrayLike,
    label: jax.typing.ArrayLike,
    head_weight: jax.typing.ArrayLike,
    tail_weights: Sequence[Sequence[jax.typing.ArrayLike]],
    cutoffs: Sequence[int],
    head_bias: jax.typing.ArrayLike | None = None,
    *,
    capacity: int | Sequence[int] | None = None,
    ignore_index: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Adaptive log-softmax target log-probabilities and their mean NLL.

  Same numbers as ``paddle.nn.functional.adaptive_log_softmax_with_loss`` and
  ``torch.nn.AdaptiveLogSoftmaxWithLoss``::

    output[n] = log p(label[n] | input[n])    (see the module docstring)
    loss      = mean_n(-output[n])

  Each tail cluster is evaluated only on the rows whose label falls in it,
  gathered into blocks of at most ``capacity`` rows (static shapes, exact for
  every batch: an overflowing cluster runs further blocks).

  Args:
    input: ``[..., D]`` float features (bf16/f16 are reduced in float32).
    label: ``[...]`` integer targets in ``[0, n_classes)``.
    head_weight: ``[D, shortlist + n_clusters]``.
    tail_weights: ``n_clusters`` pairs ``(proj [D, hsz_i], out [hsz_i,
      osz_i])`` with ``osz_i = cutoffs[i+1] - cutoffs[i]``.
    cutoffs: the boundaries ``[shortlist, ..., n_classes]`` as Paddle's layer
      passes them; torch's constructor form without ``n_classes`` is also
      accepted (``n_classes`` is then inferred from the last tail).
    head_bias: optional ``[shortlist + n_clusters]``.
    capacity: rows per gather block, an int or one per tail cluster. Larger
      blocks mean fewer loop steps; each block materialises ``capacity x osz``
      logits. Default: the largest power of two with ``capacity * osz <=
      2**21`` (8 MiB of float32 logits), at least 128 and at most
      ``next_pow2(N)``. Any value gives exact results.
    ignore_index: optional label value whose rows give ``output = 0`` and are
      excluded from the mean (not in Paddle/torch, which reject such labels).

  Returns:
    ``(output [...], loss [])``; float32 for half-precision inputs, else the
    input dtype. An out-of-range label gives NaN in its ``output`` (and the
    loss) under ``jit``; concrete labels raise ``ValueError`` eagerly, and
    ``jax_bigsoftmax.checked`` raises under ``jit``.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> x = jnp.ones((2, 4))
    >>> head = jnp.zeros((4, 3)); tails = [(jnp.ones((4, 1)), jnp.zeros((1, 2)))]
    >>> out, loss = jbs.adaptive_log_softmax_with_loss(
    ...     x, jnp.array([0, 3]), head, tails, [2, 4])
    >>> [round(float(v), 4) for v in out], round(float(loss), 4)
    ([-1.0986, -1.7918], 1.4452)

  References:
    Grave, Joulin, Cisse, Grangier, Jegou. "Efficient softmax approximation
    for GPUs", ICML 2017 (arXiv:1609.04309, 2016).
  """
  x, labels, bounds, lead = _prepare(
      input, label, head_weight, tail_weights, cutoffs, head_bias
  )
  _checks.check_labels_in_range(
      labels, bounds[-1], name="label", ignore_index=ignore_index
  )
  labels = _checks.as_index(labels)
  out = target_logprob(
      x, labels, jnp.asarray(head_weight),
      [(jnp.asarray(p), jnp.asarray(o)) for p, o in tail_weights],
      None if head_bias is None else jnp.asarray(head_bias), bounds=bounds,
      caps=_capacities(capacity, bounds, x.shape[0]), ignore_index=ignore_index,
  )
  if ignore_index is None:
    loss = -jnp.mean(out)
  else:
    kept = jnp.sum(labels != ignore_index)
    loss = -jnp.sum(out) / kept
  return jnp.reshape(out, lead), loss


def adaptive_log_prob(
    input: jax.typing.ArrayLike,
    head_weight: jax.typing.ArrayLike,
    tail_weights: Sequence[Sequence[jax.typing.ArrayLike]],
    cutoffs: Sequence[int],
    head_bias: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  """Log-probabilities of every class (torch's ``log_prob``).

  ``out[..., :c0] = head_lp[..., :c0]`` and ``out[..., c_i:c_{i+1}] =
  log_softmax(x @ proj_i @ out_i) + head_lp[..., c0 + i]``; each row sums
  (in probability) to 1.

  Args:
    input: ``[..., D]``.
    head_weight, tail_weights, cutoffs, head_bias: as in
      :func:`adaptive_log_softmax_with_loss`.

  Returns:
    ``[..., n_classes]`` (float32 for half-precision inputs).

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jnp.zeros((4, 3)); tails = [(jnp.ones((4, 1)), jnp.zeros((1, 2)))]
    >>> lp = jbs.adaptive_log_prob(jnp.ones((4,)), head, tails, [2, 4])
    >>> [round(float(p), 4) for p in jnp.exp(lp)]
    [0.3333, 0.3333, 0.1667, 0.1667]

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016.
  """
  x, _, bounds, lead = _prepare(
      input, None, head_weight, tail_weights, cutoffs, head_bias
  )
  lp = full_log_prob(
      x, jnp.asarray(head_weight),
      [(jnp.asarray(p), jnp.asarray(o)) for p, o in tail_weights],
      None if head_bias is None else jnp.asarray(head_bias), bounds=bounds,
  )
  return jnp.reshape(lp, (*lead, bounds[-1]))


def adaptive_predict(
    input: jax.typing.ArrayLike,
    head_weight: jax.typing.ArrayLike,
    tail_weights: Sequence[Sequence[jax.typing.ArrayLike]],
    cutoffs: Sequence[int],
    head_bias: jax.typing.ArrayLike | None = None,
    *,
    capacity: int | None = None,
) -> jax.Array:
  """Exact arg-max class, ``argmax(adaptive_log_prob(...), -1)``.

  torch's shortcut: a row whose head arg-max is a shortlist word needs no tail
  (every tail word has log-probability <= its cluster token's). Only the other
  rows are gathered (blocks of ``capacity`` rows, as in the loss) and scored
  cluster by cluster, never building ``[N, n_classes]``. Ties go to the lowest
  class id, as ``argmax`` does.

  Args:
    input: ``[..., D]``.
    head_weight, tail_weights, cutoffs, head_bias: as in
      :func:`adaptive_log_softmax_with_loss`.
    capacity: rows per gather block (default: the largest power of two with
      ``capacity * n_classes <= 2**21``, at least 128, at most ``next_pow2(N)``).

  Returns:
    ``[...]`` int32 class ids.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jnp.array([[1.0, 0.0, 3.0]]); tails = [(jnp.ones((1, 1)), jnp.array([[0.0, 1.0]]))]
    >>> jbs.adaptive_predict(jnp.ones((1, 1)), head, tails, [2, 4]).tolist()
    [3]

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016.
  """
  x, _, bounds, lead = _prepare(
      input, None, head_weight, tail_weights, cutoffs, head_bias
  )
  head_weight = jnp.asarray(head_weight)
  tails = [(jnp.asarray(p), jnp.asarray(o)) for p, o in tail_weights]
  head_bias = None if head_bias is None else jnp.asarray(head_bias)
  n = x.shape[0]
  if capacity is None:
    cap = _default_capacity(bounds[-1], n)
  else:
    (cap,) = _capacities(capacity, (0, 1), n)
  return jnp.reshape(_predict(x, head_weight, tails, head_bias, bounds=bounds, cap=cap), lead)


@functools.partial(jax.jit, static_argnames=("bounds", "cap"))
def _predict(x, head_weight, tails, head_bias, *, bounds, cap):
  sl = bounds[0]
  cdt = _checks.compute_dtype(x, head_weight, *[w for p in tails for w in p])
  logits = _head_logits(x, head_weight, head_bias, cdt)
  first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if not tails or x.shape[0] == 0:
    return first
  head_lp = jax.nn.log_softmax(logits, axis=-1)
  order, count = _gather_order(first >= sl, cap)

  def body(pred, start, size):
    idx, _ = _rows(order, count, start, size)
    xg = jnp.take(x, idx, axis=0, mode="clip")
    lp = jnp.take(head_lp, idx, axis=0, mode="clip")
    tail_ids, tail_lp = [], []
    for i, (proj, out) in enumerate(tails):
      _, z = _tail_logits(xg, proj, out, cdt)
      zl = jax.nn.log_softmax(z, axis=-1) + lp[:, sl + i, None]
      tail_ids.append(jnp.argmax(zl, axis=-1).astype(jnp.int32))
      tail_lp.append(jnp.max(zl, axis=-1))
    best = best_of_clusters(jnp.argmax(lp[:, :sl], axis=-1).astype(jnp.int32),
                            jnp.max(lp[:, :sl], axis=-1), tail_ids, tail_lp, bounds)
    return pred.at[idx].set(best, mode="drop")

  pred = _run_blocks(body, first, count, cap)
  return pred


def best_of_clusters(short_id, short_lp, tail_ids, tail_lp, bounds):
  """The exact arg-max class from each piece's best: ``short_id``/``short_lp`` the best
  shortlist word and its log-probability, ``tail_ids[i]``/``tail_lp[i]`` the best word of
  cluster ``i`` (id within the cluster) and its log-probability. Ties go to the lowest id,
  as ``argmax`` does (the pieces are in id order). Used by both the single-device predict
  (on the rows it gathers) and the vocabulary-sharded head (on every row)."""
  best, best_v = short_id, short_lp
  for i, (j, v) in enumerate(zip(tail_ids, tail_lp)):
    better = v > best_v
    best = jnp.where(better, bounds[i] + j, best)
    best_v = jnp.where(better, v, best_v)
  return best
