"""Exact softmax over a ``[V, D]`` matrix, on one device or vocabulary-parallel.

The loss-level layer over the statistics walk (:mod:`jax_bigsoftmax._core.walk`)
that every family with an exact softmax uses: validation of a linear
cross-entropy's arguments (:func:`prepare_linear_ce`), its one body
(:func:`run_linear_ce`, run plain or under ``shard_map``), the
vocabulary-parallel log-softmax and arg-max, and :class:`LinearSoftmax`, the
operations a head needs, chosen once per head by its placement.

Vocabulary-parallel (Megatron-LM style): ``weight`` is split on V over a mesh
axis; each device walks its own slice (its label logit only where it owns the
label) and the per-row statistics are combined with two collectives of
``[N]``-sized vectors: a ``pmax`` of the local log-sum-exp and one ``psum`` of
``(sum-exp, label logit, weighted logit sum)``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.sharding import (Placement, check_rows_divide, constrain_vocab_sharded,
                                           make_varying)
from jax_bigsoftmax._core.walk import (LossSpec, Opts, RowStats, argmax_walk, choose_chunk_size,
                                       choose_row_block, combine_row_stats, fused_loss_sum,
                                       linear_stats, make_row_loss, row_terms)


def label_terms(labels: jax.Array, num_classes: int, weight: jax.Array | None,
                ignore_index: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-position bookkeeping shared by every exact loss.

  Returns ``(safe_labels, w_label, bad)``: labels clipped into range (for
  gathers), the class weight of each label (0 where ignored) and a mask of
  out-of-range, non-ignored labels (the caller turns those into NaN).
  """
  ignored = labels == ignore_index
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  if weight is None:
    w_label = jnp.ones(labels.shape, dtype)
  else:
    w_label = jnp.asarray(weight, dtype)[safe]
  w_label = jnp.where(ignored, jnp.zeros((), dtype), w_label)
  bad = ~(in_range | ignored)
  return safe, w_label, bad


def check_linear(inputs, weight, bias):
  """Validation of ``inputs @ weight.T + bias``; returns ``(D, V)``."""
  _checks.check_floating("inputs", inputs)
  _checks.check_ndim("inputs", inputs, min_ndim=1)
  _checks.check_floating("weight", weight)
  _checks.check_ndim("weight", weight, ndim=2)
  d = jnp.shape(inputs)[-1]
  vocab = jnp.shape(weight)[0]
  _checks.check_shape("weight", weight, (None, d), f"[V, D] with D = inputs.shape[-1] = {d}")
  if vocab < 1:
    raise ValueError(f"weight must have at least one row (V >= 1); got shape {jnp.shape(weight)}.")
  if bias is not None:
    _checks.check_floating("bias", bias)
    _checks.check_shape("bias", bias, (vocab,), "one bias per row of weight")
  return d, vocab


def check_softcap(logit_softcap):
  if logit_softcap is None:
    return None
  if _checks.is_traced(logit_softcap) or isinstance(logit_softcap, bool):
    raise TypeError(f"logit_softcap must be a Python float or None; got {logit_softcap!r}.")
  cap = float(logit_softcap)
  if not (cap > 0 and cap != float("inf")):
    raise ValueError(f"logit_softcap must be a positive finite float or None; got {logit_softcap!r}.")
  return cap


def _check_z_loss(z_loss):
  if _checks.is_traced(z_loss) or isinstance(z_loss, bool):
    raise TypeError(f"z_loss must be a Python float (static); got {z_loss!r}.")
  a = float(z_loss)
  if not (a >= 0 and a != float("inf")):
    raise ValueError(f"z_loss must be a finite float >= 0; got {z_loss!r}.")
  return a


class Prepared(NamedTuple):
  d: int
  vocab: int
  labels: jax.Array          # original shape and dtype
  class_weight: jax.Array | None
  token_weight: jax.Array | None
  eps: float
  z_loss: float
  softcap: float | None


def trusted_linear_ce(inputs, weight, labels, *, label_smoothing: float = 0.0,
                      z_loss: float = 0.0, logit_softcap: float | None = None) -> Prepared:
  """The :class:`Prepared` arguments of a caller that validated them itself (a head)."""
  return Prepared(jnp.shape(inputs)[-1], jnp.shape(weight)[0], jnp.asarray(labels), None, None,
                  float(label_smoothing), float(z_loss), logit_softcap)


def prepare_linear_ce(inputs, weight, labels, bias, class_weight, token_weight, ignore_index,
                      reduction, label_smoothing, z_loss, logit_softcap) -> Prepared:
  """Validation shared by the linear cross-entropies (the public entry points)."""
  d, vocab = check_linear(inputs, weight, bias)
  _checks.check_integer("labels", labels)
  _checks.check_batch_match("inputs", jnp.shape(inputs), "labels", jnp.shape(labels))
  _checks.check_reduction(reduction)
  _checks.check_label_smoothing(label_smoothing)
  if _checks.is_traced(label_smoothing):
    raise TypeError("label_smoothing must be a Python float here, not a traced value.")
  if class_weight is not None:
    _checks.check_floating("class_weight", class_weight)
    _checks.check_shape("class_weight", class_weight, (vocab,), "one weight per class")
    class_weight = jnp.asarray(class_weight)
  if token_weight is not None:
    _checks.check_floating("token_weight", token_weight)
    _checks.check_shape("token_weight", token_weight, jnp.shape(labels),
                        "one weight per label position")
    token_weight = jnp.asarray(token_weight)
  # Range check on the labels as given (before any narrowing to int32).
  _checks.check_labels_in_range(labels, vocab, name="labels", ignore_index=ignore_index)
  labels = jnp.asarray(labels)
  return Prepared(d, vocab, labels, class_weight, token_weight, float(label_smoothing),
                  _check_z_loss(z_loss), check_softcap(logit_softcap))


def flat_row_terms(p: Prepared, ignore_index: int, dtype):
  """Flat ``[N]`` label ids (int32, -1 where not a class), keep mask, bad mask and
  the per-row arguments of :func:`make_row_loss`."""
  labels = p.labels.reshape(-1)
  _, w_label, bad = label_terms(labels, p.vocab, p.class_weight, ignore_index, dtype)
  in_range = (labels >= 0) & (labels < p.vocab)
  keep = in_range & (labels != ignore_index)
  # Compare in the labels' own width before narrowing (no int64 -> int32 wrap).
  y = jnp.where(in_range, labels, -1).astype(jnp.int32)
  w_token = (jnp.ones(labels.shape, dtype) if p.token_weight is None
             else p.token_weight.reshape(-1).astype(dtype))
  w_token = jnp.where(keep, w_token, jnp.zeros((), dtype))
  w_label = jnp.where(keep, w_label, jnp.zeros((), dtype))
  w_total = (jnp.asarray(p.vocab, dtype) if p.class_weight is None
             else jnp.sum(p.class_weight.astype(dtype)))
  return y, keep, bad, (w_label, w_token, jnp.broadcast_to(w_total, labels.shape), keep)


def loss_spec(p: Prepared) -> LossSpec:
  return LossSpec(p.vocab, p.eps, p.z_loss)


def finish(per_row_ce, per_row_z, stats, y_shape, bad, keep, row_args, reduction, return_aux,
           out_dtype, total=None):
  """Reduction, NaN marking of bad labels and the aux dict."""
  w_label, w_token, _, _ = row_args
  denom = jnp.sum(w_label * w_token)
  safe_denom = jnp.where(denom == 0, jnp.ones((), denom.dtype), denom)
  any_bad = jnp.any(bad)

  def reduce(rows, tot=None):
    if reduction == "none":
      return jnp.where(bad, jnp.nan, rows).reshape(y_shape)
    tot = jnp.sum(rows) if tot is None else tot
    tot = jnp.where(any_bad, jnp.nan, tot)
    if reduction == "sum":
      return tot
    return jnp.where(denom == 0, jnp.nan, tot / safe_denom)

  loss = reduce(per_row_ce + per_row_z, total).astype(out_dtype)
  if not return_aux:
    return loss
  sg = lax.stop_gradient
  aux = {
      "lse": sg(stats.lse).reshape(y_shape),
      "z_loss": sg(reduce(per_row_z)).astype(out_dtype),
      "predicted": stats.arg.reshape(y_shape),
      "entropy": sg(stats.lse - stats.pz).reshape(y_shape),
      "num_tokens": sg(denom),
  }
  return loss, aux

def run_linear_ce(p: Prepared, inputs, weight, bias, ignore_index: int, reduction: str,
                  return_aux: bool, chunk_size: int | None, placement: Placement | None,
                  chunk_elements: int | None = None):
  """The linear cross-entropy of validated arguments, on one device or vocabulary-parallel.

  One body serves both: ``local`` is the whole computation of one device; with
  a ``placement`` it runs under ``shard_map`` on each device's slice of the
  vocabulary (labels made relative to it) and the row statistics are combined
  across the slices (:func:`combine_row_stats`: a ``pmax`` and a ``psum`` of
  ``[N]`` vectors). ``"mean"``/``"sum"`` take the one-pass gradient (3 matrix
  products; combined per row block), ``"none"`` the recomputing walk.
  """
  inputs, weight = jnp.asarray(inputs), jnp.asarray(weight)
  bias = None if bias is None else jnp.asarray(bias)
  acc = _checks.compute_dtype(inputs, weight)
  x = inputs.reshape(-1, p.d)
  y, keep, bad, row_args = flat_row_terms(p, ignore_index, acc)
  rows, vocab = x.shape[0], p.vocab
  vocab_axis = None
  if placement is not None:
    if vocab % placement.num_shards:
      raise ValueError(f"weight has V={vocab} rows, which does not divide by the size of mesh"
                       f" axis {placement.vocab_axis!r} ({placement.num_shards}).")
    check_rows_divide(rows, placement)
    rows, vocab = placement.local_rows(rows), vocab // placement.num_shards
    vocab_axis = placement.vocab_axis
  aux = bool(return_aux)
  opts = Opts(choose_chunk_size(rows, vocab, chunk_size, chunk_elements),
              choose_row_block(rows, vocab, chunk_size),
              p.eps != 0.0, p.softcap, aux, chunk_size, vocab_axis)
  spec = loss_spec(p)
  fused = reduction != "none"
  row_loss = make_row_loss(spec) if fused else None

  def local(x, w, b, y, cw, keep, row_args):
    if placement is not None:
      # Every operand varies over every mesh axis inside; autodiff then psums the
      # gradients of replicated operands (x over vocab, weight over data).
      x, w, b, y, cw, keep = make_varying((x, w, b, y, cw, keep), placement.axes)
      offset = lax.axis_index(vocab_axis) * vocab
      y = jnp.where(y >= 0, y - offset, -1)
    if fused:
      total, stats = fused_loss_sum(opts, row_loss, x, w, b, y, cw, row_args, keep)
      return total[None], stats
    stats = linear_stats(opts, x, w, b, y, cw, keep)
    if placement is not None:
      stats = combine_row_stats(stats, offset, vocab_axis, aux)
    return jnp.zeros((1,), stats.lse.dtype), stats

  args = (x, weight, bias, y, p.class_weight, keep, row_args)
  if placement is None:
    total, stats = local(*args)
  else:
    r, v = P(placement.data_axis), P(vocab_axis)
    specs = (P(placement.data_axis, None), P(vocab_axis, None), None if bias is None else v, r,
             None if p.class_weight is None else v, r, (r,) * len(row_args))
    total, stats = jax.shard_map(local, mesh=placement.mesh, in_specs=specs,
                                 out_specs=(r, RowStats(*[r] * 6)))(*args)
  if fused:
    # The differentiable total comes from the fused kernel; the rows' terms again
    # from the (non-differentiated) statistics, for the aux z-loss.
    sg = lax.stop_gradient
    ce, zl = row_terms(spec, sg(stats.lse), sg(stats.zy), sg(stats.zw), row_args)
    return finish(ce, zl, stats, p.labels.shape, bad, keep, row_args, reduction, return_aux, acc,
                  total=jnp.sum(total))
  ce, zl = row_terms(spec, stats.lse, stats.zy, stats.zw, row_args)
  return finish(ce, zl, stats, p.labels.shape, bad, keep, row_args, reduction, return_aux, acc)


def _setup(inputs, weight, bias, placement: Placement):
  d, vocab = check_linear(inputs, weight, bias)
  if vocab % placement.num_shards:
    raise ValueError(f"weight has V={vocab} rows, which does not divide by the size of mesh axis"
                     f" {placement.vocab_axis!r} ({placement.num_shards}); pad it with pad_vocab.")
  x = jnp.asarray(inputs).reshape(-1, d)
  check_rows_divide(x.shape[0], placement)
  w = jnp.asarray(weight)
  b = jnp.zeros((vocab,), w.dtype) if bias is None else jnp.asarray(bias)
  return x, w, b, vocab // placement.num_shards


def vocab_parallel_log_softmax(
    inputs,
    weight,
    bias=None,
    *,
    placement: Placement,
    logit_softcap: float | None = None,
) -> jax.Array:
  """``log_softmax(cap(inputs @ weight.T + bias))`` ``[..., V]``, sharded on V over ``vocab_axis``.

  Each shard computes its ``[N_local, V / P]`` block of logits and its local
  log-sum-exp; a ``pmax`` and a ``psum`` of ``[N_local]`` vectors give the
  global one. The result stays sharded ``P(data_axis, vocab_axis)``.
  Differentiable (plain autodiff through the collectives).
  """
  lead = jnp.shape(inputs)[:-1]
  x, w, b, _ = _setup(inputs, weight, bias, placement)
  mesh, vocab_axis, data_axis, axes = (placement.mesh, placement.vocab_axis, placement.data_axis,
                                       placement.axes)

  def local(x, w, b):
    x, w, b = make_varying((x, w, b), axes)
    z = lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32) + b.astype(jnp.float32)[None, :]
    if logit_softcap is not None:
      z = logit_softcap * jnp.tanh(z / logit_softcap)
    m = lax.pmax(lax.stop_gradient(jnp.max(z, axis=1)), vocab_axis)
    s = lax.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=1), vocab_axis)
    return z - (m + jnp.log(s))[:, None]

  out = jax.shard_map(local, mesh=mesh,
                      in_specs=(P(data_axis, None), P(vocab_axis, None), P(vocab_axis)),
                      out_specs=P(data_axis, vocab_axis))(x, w, b)
  return out.reshape(tuple(lead) + (w.shape[0],))


def vocab_parallel_argmax(
    inputs,
    weight,
    bias=None,
    *,
    placement: Placement,
    chunk_size: int | None = None,
    logit_softcap: float | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact arg-max of ``cap(inputs @ weight.T + bias)`` with ``weight`` sharded on V.

  Each shard walks its ``V / P`` rows in chunks with the statistics kernel of
  :func:`linear_cross_entropy` (never ``[N, V / P]`` logits); the per-shard
  maxima, arg-maxes and log-sum-exps are combined as in
  :func:`vocab_parallel_cross_entropy`. ``jnp.argmax``'s semantics: ties
  resolve to the smallest index, a NaN logit wins.

  Returns:
    ``(ids [...] int32, max logit [...], log-sum-exp [...])`` (float32 or wider):
    ``max - lse`` is the log-probability of the arg-max class.
  """
  lead = tuple(jnp.shape(inputs)[:-1])
  x, w, b, local_vocab = _setup(inputs, weight, bias, placement)
  mesh, vocab_axis, data_axis = placement.mesh, placement.vocab_axis, placement.data_axis
  n_local = placement.local_rows(x.shape[0])
  opts = Opts(choose_chunk_size(n_local, local_vocab, chunk_size), n_local, False,
              logit_softcap, True)
  axes = placement.axes

  def local(x, w, b):
    x, w, b = make_varying((x, w, b), axes)
    n = x.shape[0]
    no_label = make_varying(jnp.full((n,), -1, jnp.int32), axes)
    keep = make_varying(jnp.ones((n,), bool), axes)
    stats = linear_stats(opts, x, w, b, no_label, None, keep)
    offset = lax.axis_index(vocab_axis) * local_vocab
    stats = combine_row_stats(stats, offset, vocab_axis, aux=True)
    return stats.arg, stats.best, stats.lse

  rows = P(data_axis)
  ids, m, lse = jax.shard_map(local, mesh=mesh,
                              in_specs=(P(data_axis, None), P(vocab_axis, None), P(vocab_axis)),
                              out_specs=(rows, rows, rows))(x, w, b)
  return ids.reshape(lead), m.reshape(lead), lse.reshape(lead)


class LinearSoftmax(NamedTuple):
  """The exact-softmax operations of a head over one ``[V, D]`` matrix.

  On one device (``placement`` None) or vocabulary-parallel: a head builds
  it once from its configuration, and its methods never ask again. Every
  method validates its operands (the heads' entry point).
  """
  placement: Placement | None = None
  chunk_size: int | None = None
  logit_softcap: float | None = None
  # Logits per vocabulary chunk when chunk_size is None (None: the walk's default).
  chunk_elements: int | None = None

  def cross_entropy(self, x, w, b, labels, *, ignore_index: int, reduction: str = "none",
                    label_smoothing: float = 0.0, z_loss: float = 0.0, validate: bool = True):
    """:func:`linear_cross_entropy` of ``cap(x @ w.T + b)`` (sharded: vocabulary-parallel).

    ``validate=False``: the caller has checked the operands and the labels
    (out-of-range labels still give NaN).
    """
    if validate:
      p = prepare_linear_ce(x, w, labels, b, None, None, ignore_index, reduction,
                            label_smoothing, z_loss, self.logit_softcap)
    else:
      p = trusted_linear_ce(x, w, labels, label_smoothing=label_smoothing, z_loss=z_loss,
                            logit_softcap=self.logit_softcap)
    return run_linear_ce(p, x, w, b, ignore_index, reduction, False, self.chunk_size,
                         self.placement, self.chunk_elements)

  def log_softmax(self, x, w, b):
    """``[..., V]`` log-probabilities (sharded on V when the head is)."""
    if self.placement is not None:
      out = vocab_parallel_log_softmax(x, w, b, placement=self.placement,
                                       logit_softcap=self.logit_softcap)
      return constrain_vocab_sharded(out, self.placement)
    check_linear(x, w, b)
    acc = _checks.compute_dtype(x, w)  # float32 for half inputs, float64 under x64
    logits = jnp.dot(x, w.T, preferred_element_type=acc)
    if b is not None:
      logits = logits + b.astype(acc).reshape((1,) * (logits.ndim - 1) + (-1,))
    if self.logit_softcap is not None:
      logits = self.logit_softcap * jnp.tanh(logits / self.logit_softcap)
    return jax.nn.log_softmax(logits, axis=-1)

  def argmax_stats(self, x, w, b):
    """``(ids, max logit, log-sum-exp)`` ``[...]`` each (see :func:`vocab_parallel_argmax`)."""
    if self.placement is not None:
      return vocab_parallel_argmax(x, w, b, placement=self.placement, chunk_size=self.chunk_size,
                                   logit_softcap=self.logit_softcap)
    d, vocab = check_linear(x, w, b)
    lead = jnp.shape(x)[:-1]
    x2 = jnp.asarray(x).reshape(-1, d)
    opts = Opts(choose_chunk_size(x2.shape[0], vocab, self.chunk_size), x2.shape[0], False,
                self.logit_softcap, True)
    n = x2.shape[0]
    stats = linear_stats(opts, x2, jnp.asarray(w), None if b is None else jnp.asarray(b),
                         jnp.full((n,), -1, jnp.int32), None, jnp.ones((n,), bool))
    return stats.arg.reshape(lead), stats.best.reshape(lead), stats.lse.reshape(lead)

  def argmax(self, x, w, b):
    """``[...]`` arg-max class ids (the softcap is monotone: not applied)."""
    if self.placement is not None:
      return vocab_parallel_argmax(x, w, b, placement=self.placement,
                                   chunk_size=self.chunk_size)[0]
    d, vocab = check_linear(x, w, b)
    lead = jnp.shape(x)[:-1]
    x = jnp.asarray(x).reshape(-1, d)
    c = choose_chunk_size(x.shape[0], vocab, self.chunk_size)
    b = None if b is None else jnp.asarray(b)
    return argmax_walk(x, jnp.asarray(w), b, c).reshape(lead)
