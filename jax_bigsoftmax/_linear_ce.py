"""Exact cross-entropy of a linear layer without materialising ``[N, V]`` logits.

Two kernels share one set of per-row statistics (``RowStats``) and one
gradient formula (:func:`_dlogits`):

* The **vocabulary walk** (forward, and the backward of unreduced losses):
  ``weight`` is walked in chunks of ``c`` rows; per example it keeps an online
  log-sum-exp (running max and rescaled sum, safe when whole chunks are
  ``-inf``), the label logit, the class-weighted logit sum (label smoothing),
  and, when asked, the probability-weighted logit sum (entropy) and a running
  arg-max. Its ``custom_vjp`` recomputes each chunk's logits from the saved
  log-sum-exp (4 matrix products in all). Peak temporary memory is O(N * c).
* The **one-pass gradient** (reduced losses under differentiation): the rows
  are taken in blocks of ``r``; a block runs the same vocabulary walk over
  cache-sized chunks but stores each chunk's logits (``[V // c, r, c]``), and
  once its log-sum-exp is known turns every stored chunk into its gradient and
  accumulates it, so the whole forward+backward costs 3 matrix products (as a
  dense ``logits -> loss`` step) in O(r * V) memory. The backward only scales
  the saved gradients by the cotangent. A plain forward (no differentiation)
  never pays for it: it runs the vocabulary walk.

The vocabulary is split into ``V // c`` full chunks (a ``fori_loop``) and one
static remainder chunk, so no column is visited twice and ``weight`` is never
padded or copied.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks
from jax_bigsoftmax._exact import label_terms
from jax_bigsoftmax._sharding import make_varying, varying_axes
from jax_bigsoftmax._sharding import varying_like as _varying_like

# Default vocabulary chunk: about 2**21 logits (8 MiB in float32) per chunk, at
# least 128 columns. Cache-sized chunks were faster than 64 MiB ones: 21% faster
# steps for the example LM's full head (N=1024, D=128, V=48,752).
_CHUNK_ELEMENTS = 1 << 21
# Default row block of the one-pass gradient: about 2**26 stored logits (256 MiB
# in float32) per block, at least 8 rows. Blocks must be tall: each one streams
# the whole weight through 3 matrix products. At N=4096, D=512, V=131,072 on a
# 2-core AMD EPYC VM: 128-row blocks holding [r, V] arrays 18 s per step, 512-row
# ones 14 s; 512-row blocks walked in cache-sized chunks (stored chunk-major,
# gradients formed while the chunk is in cache) 11.4 s, with or without a softcap;
# 283 MiB of temporaries, 14x below dense.
_BLOCK_ELEMENTS = 1 << 26


def choose_chunk_size(num_rows: int, vocab: int, chunk_size: int | None) -> int:
  """The vocabulary chunk used for ``num_rows`` rows (static)."""
  if chunk_size is None:
    c = _CHUNK_ELEMENTS // max(num_rows, 1)
    c = max(128, (c // 128) * 128)
  else:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
      raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}.")
    c = chunk_size
  return max(1, min(c, vocab))


def choose_row_block(num_rows: int, vocab: int, chunk_size: int | None) -> int:
  """Rows per block of the one-pass gradient (static): about 2**26 logits, or the
  walk's own ``[N, chunk_size]`` budget when ``chunk_size`` is given."""
  budget = _BLOCK_ELEMENTS if chunk_size is None else num_rows * chunk_size
  r = max(8, (budget // max(vocab, 1)) // 8 * 8)
  return max(1, min(r, num_rows))


class Opts(NamedTuple):
  """Static configuration of the kernels (hashable)."""
  chunk: int            # vocabulary chunk of the walk
  row_block: int        # rows per block of the one-pass gradient
  smooth: bool          # compute the class-weighted logit sum (label smoothing)
  softcap: float | None  # logits become softcap * tanh(z / softcap)
  aux: bool             # compute the entropy term and the arg-max
  block_chunk: int | None = None  # vocabulary chunk within a row block (None: cache-sized)
  vocab_axis: str | None = None   # inside shard_map: the mesh axis weight's rows are split on


class RowStats(NamedTuple):
  """Per-row statistics of ``z = cap(x @ weight.T + bias)`` (``[N]`` each).

  ``lse``: log-sum-exp; ``zy``: the label's logit (0 when the label is not in
  this weight's rows); ``zw``: ``sum_j cw_j z_j`` (0 unless smoothing);
  ``pz``: ``sum_j softmax(z)_j z_j`` (entropy = lse - pz; 0 unless aux);
  ``best``/``arg``: max logit and its first index, NaN first as ``jnp.argmax``
  (unless aux: zeros).
  """
  lse: jax.Array
  zy: jax.Array
  zw: jax.Array
  pz: jax.Array
  best: jax.Array
  arg: jax.Array


# --- logits and their derivative -------------------------------------------------

def _logits(x, weight, bias, start, size, softcap):
  """Capped logits of columns ``[start, start + size)`` in the accumulation dtype."""
  acc = _checks.compute_dtype(x, weight)
  w_c = lax.dynamic_slice_in_dim(weight, start, size, axis=0)
  z = lax.dot_general(x, w_c, (((1,), (1,)), ((), ())), preferred_element_type=acc)
  if bias is not None:
    z = z + lax.dynamic_slice_in_dim(bias, start, size).astype(acc)[None, :]
  if softcap is not None:
    z = softcap * jnp.tanh(z / softcap)
  return z


def _softmax(z, lse):
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # a row that is -inf here: softmax part 0
  return jnp.exp(z - lse[:, None])


def _dlogits(p, z, cols, labels, g, class_weight_c, softcap):
  """d(row objective)/d(raw logits) for one block of columns.

  With the softmax part ``p`` of these columns and the objective's cotangents
  ``g = (g_lse, g_zy, g_zw)`` per row, ``dz = g_lse * p + g_zy * onehot(label)
  + g_zw * cw``, then the softcap's chain rule ``1 - (z / softcap)**2``.
  """
  g_lse, g_zy, g_zw = g
  dz = p * g_lse[:, None]
  dz = dz + jnp.where(cols[None, :] == labels[:, None], g_zy[:, None], 0.0)
  if class_weight_c is not None:
    dz = dz + g_zw[:, None] * class_weight_c[None, :]
  if softcap is not None:
    dz = dz * (1.0 - jnp.square(z / softcap))
  return dz


def _walk(fn: Callable, carry: Any, vocab: int, c: int) -> Any:
  """``fn(start, size, carry)`` over ``V // c`` full chunks, then the remainder."""
  full, rest = divmod(vocab, c)
  if full:
    carry = lax.fori_loop(0, full, lambda k, cy: fn(k * c, c, cy), carry)
  if rest:
    carry = fn(full * c, rest, carry)
  return carry


def _cw_slice(class_weight, start, size, smooth, dtype):
  if not smooth:
    return None
  if class_weight is None:
    return jnp.ones((size,), dtype)
  return lax.dynamic_slice_in_dim(class_weight, start, size).astype(dtype)


def _argmax_update(best, arg, z, start):
  """Running arg-max with ``jnp.argmax``'s semantics (first NaN, else first max)."""
  j = jnp.argmax(z, axis=1)
  v = jnp.take_along_axis(z, j[:, None], axis=1)[:, 0]
  better = (v > best) | (jnp.isnan(v) & ~jnp.isnan(best))
  return jnp.where(better, v, best), jnp.where(better, start + j.astype(arg.dtype), arg)


# --- the vocabulary walk ----------------------------------------------------------

def _stats_init(n, acc):
  """The walk's running statistics before any column: (m, s, zy, zw, pz, best, arg)."""
  zeros = jnp.zeros((n,), acc)
  return (jnp.full((n,), -jnp.inf, acc), zeros, zeros, zeros, zeros,
          jnp.full((n,), -jnp.inf, acc), jnp.zeros((n,), jnp.int32))


def _stats_update(carry, z, start, labels, class_weight, opts: Opts):
  """Adds the logits ``z`` of columns ``[start, start + z.shape[1])`` to the running
  statistics: online log-sum-exp, label logit, class-weighted sum, entropy, arg-max."""
  m, s, zy, zw, pz, best, arg = carry
  size = z.shape[1]
  cols = start + jnp.arange(size, dtype=labels.dtype)
  m_new = jnp.maximum(m, jnp.max(z, axis=1))
  # A row whose logits so far are all -inf keeps s = 0 (never exp(-inf + inf)).
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  scale = jnp.exp(m - m_safe)
  e = jnp.exp(z - m_safe[:, None])
  s = s * scale + jnp.sum(e, axis=1)
  zy = zy + jnp.sum(jnp.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
  cw = _cw_slice(class_weight, start, size, opts.smooth, z.dtype)
  if cw is not None:
    zw = zw + z @ cw
  if opts.aux:
    pz = pz * scale + jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=1)
    best, arg = _argmax_update(best, arg, z, start)
  return m_new, s, zy, zw, pz, best, arg


def _stats_final(carry, opts: Opts) -> RowStats:
  m, s, zy, zw, pz, best, arg = carry
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  lse = m_safe + jnp.log(s)
  if opts.aux:
    pz = pz / s
  return RowStats(lse, zy, zw, pz, best, arg)


def _forward_stats(x, weight, bias, labels, class_weight, opts: Opts) -> RowStats:
  acc = _checks.compute_dtype(x, weight)

  def step(start, size, carry):
    z = _logits(x, weight, bias, start, size, opts.softcap)
    return _stats_update(carry, z, start, labels, class_weight, opts)

  init = _varying_like(_stats_init(x.shape[0], acc), x, weight, bias, labels, class_weight)
  return _stats_final(_walk(step, init, weight.shape[0], opts.chunk), opts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def linear_stats(opts: Opts, x, weight, bias, labels, class_weight, keep) -> RowStats:
  """Per-row :class:`RowStats` of ``cap(x @ weight.T + bias)``, chunked over V.

  ``labels`` outside ``[0, V)`` give ``zy = 0`` (vocab-parallel shards pass
  labels relative to their slice). Differentiable in ``x``, ``weight`` and
  ``bias`` through ``lse``, ``zy`` and ``zw`` (``pz``, ``best``, ``arg`` are
  not differentiated); rows where ``keep`` is False get exactly zero gradient
  even when their inputs are NaN or infinite.
  """
  del keep
  return _forward_stats(x, weight, bias, labels, class_weight, opts)


def _linear_stats_fwd(opts, x, weight, bias, labels, class_weight, keep):
  stats = _forward_stats(x, weight, bias, labels, class_weight, opts)
  return stats, (x, weight, bias, labels, class_weight, keep, stats.lse)


def _linear_stats_bwd(opts, res, cts):
  x, weight, bias, labels, class_weight, keep, lse = res
  acc = lse.dtype
  g = tuple(jnp.where(keep, t.astype(acc), 0.0) for t in (cts.lse, cts.zy, cts.zw))
  x_safe = jnp.where(keep[:, None], x, jnp.zeros((), x.dtype))

  def step(start, size, carry):
    dx, dw, db = carry
    z = _logits(x_safe, weight, bias, start, size, opts.softcap)
    cols = start + jnp.arange(size, dtype=labels.dtype)
    cw = _cw_slice(class_weight, start, size, opts.smooth, acc)
    dz = _dlogits(_softmax(z, lse), z, cols, labels, g, cw, opts.softcap)
    dz = jnp.where(keep[:, None], dz, 0.0)
    return _accumulate(dx, dw, db, dz, x_safe, weight, start, size, acc)

  init = (jnp.zeros(x.shape, acc), jnp.zeros_like(weight),
          None if bias is None else jnp.zeros_like(bias))
  init = _varying_like(init, x, weight, bias, labels, class_weight, lse)
  dx, dw, db = _walk(step, init, weight.shape[0], opts.chunk)
  dcw = None if class_weight is None else jnp.zeros_like(class_weight)
  return dx.astype(x.dtype), dw, db, None, dcw, None


def _accumulate(dx, dw, db, dz, x, weight, start, size, acc):
  """Adds one column block's ``dz`` to ``(dx, dweight, dbias)``."""
  w_c = lax.dynamic_slice_in_dim(weight, start, size, axis=0)
  dx = dx + jnp.dot(dz.astype(weight.dtype), w_c, preferred_element_type=acc)
  # dz.T @ x, not a dot_general contracting dim 0 of both: XLA's CPU backend runs
  # that form ~25% slower; the transpose is fused into dz's computation.
  dw_c = jnp.dot(dz.astype(x.dtype).T, x, preferred_element_type=acc)
  prev = lax.dynamic_slice_in_dim(dw, start, size, axis=0)
  dw = lax.dynamic_update_slice_in_dim(dw, prev + dw_c.astype(dw.dtype), start, axis=0)
  if db is not None:
    prev_b = lax.dynamic_slice_in_dim(db, start, size)
    db = lax.dynamic_update_slice_in_dim(db, prev_b + jnp.sum(dz, axis=0).astype(db.dtype),
                                         start, axis=0)
  return dx, dw, db


linear_stats.defvjp(_linear_stats_fwd, _linear_stats_bwd)


# --- the one-pass gradient (reduced losses) ---------------------------------------

def combine_row_stats(local: RowStats, offset, axis: str, aux: bool) -> RowStats:
  """Global :class:`RowStats` from each vocabulary shard's local ones (inside
  ``shard_map``): a ``pmax`` and one ``psum`` of ``[N]`` vectors (plus a
  ``pmax``/``pmin`` pair for the arg-max when ``aux``)."""
  m = lax.pmax(lax.stop_gradient(local.lse), axis)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)  # a row that is -inf on every shard
  e = jnp.exp(local.lse - m_safe)
  parts = [e, local.zy, local.zw]
  if aux:
    parts.append(jnp.where(e > 0, e * local.pz, 0.0))
  sums = lax.psum(jnp.stack(parts), axis)
  lse = m_safe + jnp.log(sums[0])
  if not aux:
    zero = jnp.zeros_like(lse)
    return RowStats(lse, sums[1], sums[2], zero, zero, jnp.zeros(lse.shape, jnp.int32))
  pz = sums[3] / sums[0]
  # arg-max with jnp.argmax's semantics across shards: first NaN, else first max.
  local_best = lax.stop_gradient(local.best)
  is_nan = jnp.isnan(local_best)
  any_nan = lax.pmax(is_nan.astype(jnp.int32), axis) > 0
  best = lax.pmax(jnp.where(is_nan, -jnp.inf, local_best), axis)
  mine = jnp.where(any_nan, is_nan, local_best == best)
  big = jnp.iinfo(jnp.int32).max
  arg = lax.pmin(jnp.where(mine, local.arg + offset, big), axis)
  return RowStats(lse, sums[1], sums[2], pz, jnp.where(any_nan, jnp.nan, best), arg)



def _fused_forward(opts, row_loss, x, weight, bias, labels, class_weight, row_args, keep):
  """Loss sum, stats and the loss sum's gradients, one row block at a time.

  A block of ``r`` rows walks the vocabulary twice over cache-sized chunks of ``c``
  columns: the first computes each chunk's logits once, adds them to the running
  statistics and stores them in a ``[V // c, r, c]`` buffer (chunk-major, so every
  store and load is contiguous); once the block's log-sum-exp is known, the second
  turns each stored chunk into its gradient and adds it to ``dx``, ``dweight`` and
  ``dbias`` while it is still in cache. 3 matrix products in all, as a dense step.

  With ``opts.vocab_axis`` (inside ``shard_map``, ``weight`` this device's rows,
  ``labels`` relative to them) each block's statistics are combined across the
  vocabulary shards before its gradients are formed, so every shard only ever
  touches its own rows; the loss sum and the statistics are the global ones.
  """
  n, vocab = x.shape[0], weight.shape[0]
  ax = opts.vocab_axis
  offset = None if ax is None else lax.axis_index(ax) * vocab
  acc = _checks.compute_dtype(x, weight)
  r = opts.row_block
  # Cache-sized in both the logits chunk [r, c] and the weight rows it reads [c, D].
  c = opts.block_chunk or choose_chunk_size(max(r, x.shape[1]), vocab, None)
  full, rest = divmod(vocab, c)

  def block(start, size, carry):
    total, stats, dx, dw, db, buf = carry
    rows = lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0)  # noqa: E731
    x_b, y_b, k_b = rows(x), rows(labels), rows(keep)
    args_b = jax.tree.map(rows, row_args)
    # The last, shorter block gets its own buffer (the loop's is dead by then).
    store = buf if size == r else _varying_like(jnp.zeros((full, size, c), acc), x, weight)

    def fill(k, cy):
      st, store = cy
      z = _logits(x_b, weight, bias, k * c, c, opts.softcap)
      return (_stats_update(st, z, k * c, y_b, class_weight, opts),
              lax.dynamic_update_index_in_dim(store, z, k, 0))

    st = _varying_like(_stats_init(size, acc), x, weight, bias, labels, class_weight)
    st, store = lax.fori_loop(0, full, fill, (st, store)) if full else (st, store)
    z_rest = _logits(x_b, weight, bias, full * c, rest, opts.softcap) if rest else None
    if rest:
      st = _stats_update(st, z_rest, full * c, y_b, class_weight, opts)
    st = _stats_final(st, opts)
    if ax is not None:
      st = combine_row_stats(st, offset, ax, opts.aux)

    loss_b, vjp = jax.vjp(lambda lse, zy, zw: row_loss(lse, zy, zw, args_b), st.lse, st.zy, st.zw)
    g = tuple(jnp.where(k_b, t, 0.0) for t in vjp(jnp.ones_like(loss_b)))
    x_safe = jnp.where(k_b[:, None], x_b, jnp.zeros((), x.dtype))

    def grad(z, start_c, cy):
      dx_b, dw, db = cy
      cols = start_c + jnp.arange(z.shape[1], dtype=labels.dtype)
      cw = _cw_slice(class_weight, start_c, z.shape[1], opts.smooth, acc)
      dz = _dlogits(_softmax(z, st.lse), z, cols, y_b, g, cw, opts.softcap)
      dz = jnp.where(k_b[:, None], dz, 0.0)
      return _accumulate(dx_b, dw, db, dz, x_safe, weight, start_c, z.shape[1], acc)

    cy = (_varying_like(jnp.zeros((size, x.shape[1]), acc), x, weight), dw, db)
    if full:
      cy = lax.fori_loop(0, full, lambda k, cy: grad(store[k], k * c, cy), cy)
    if rest:
      cy = grad(z_rest, full * c, cy)
    dx_b, dw, db = cy
    dx = lax.dynamic_update_slice_in_dim(dx, dx_b.astype(dx.dtype), start, axis=0)
    stats = jax.tree.map(lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, axis=0),
                         stats, st)
    return total + jnp.sum(loss_b), stats, dx, dw, db, (store if size == r else buf)

  refs = (x, weight, bias, labels, class_weight)
  # The loss sum and the (combined) statistics do not vary over the vocabulary axis.
  row_axes = frozenset().union(*(varying_axes(a) for a in jax.tree.leaves(refs))) - {ax}
  stats0 = RowStats(*(jnp.zeros((n,), acc),) * 5, jnp.zeros((n,), jnp.int32))
  total0, stats0 = make_varying((jnp.zeros((), acc), stats0), row_axes)
  init = _varying_like((jnp.zeros(x.shape, acc), jnp.zeros(weight.shape, acc),
                        None if bias is None else jnp.zeros(bias.shape, acc),
                        jnp.zeros((full, r, c), acc)), *refs)
  total, stats, dx, dw, db, _ = _walk(block, (total0, stats0, *init), n, r)
  return (total, stats, dx.astype(x.dtype), dw.astype(weight.dtype),
          None if bias is None else db.astype(bias.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def fused_loss_sum(opts: Opts, row_loss: Callable, x, weight, bias, labels, class_weight,
                   row_args, keep):
  """``(sum_i row_loss(stats_i), stats)`` with one-pass gradients.

  ``row_loss(lse, zy, zw, row_args) -> [N]`` maps the row statistics to the
  per-row loss (0 where ``keep`` is False); only the sum is differentiable.
  Without differentiation this is the vocabulary walk; under differentiation
  the row-block pass computes the gradients with the loss (3 matrix products)
  and the backward scales them by the cotangent.
  """
  stats = _forward_stats(x, weight, bias, labels, class_weight, opts)
  if opts.vocab_axis is not None:
    offset = lax.axis_index(opts.vocab_axis) * weight.shape[0]
    stats = combine_row_stats(stats, offset, opts.vocab_axis, opts.aux)
  return jnp.sum(row_loss(stats.lse, stats.zy, stats.zw, row_args)), stats


def _fused_fwd(opts, row_loss, x, weight, bias, labels, class_weight, row_args, keep):
  total, stats, dx, dw, db = _fused_forward(opts, row_loss, x, weight, bias, labels,
                                            class_weight, row_args, keep)
  return (total, stats), (dx, dw, db, class_weight, row_args)


def _fused_bwd(opts, row_loss, res, cts):
  dx, dw, db, class_weight, row_args = res
  g = cts[0]
  scale = lambda a: None if a is None else (a * g.astype(a.dtype))  # noqa: E731
  dcw = None if class_weight is None else jnp.zeros_like(class_weight)
  return (scale(dx), scale(dw), scale(db), None, dcw,
          jax.tree.map(_zero_cotangent, row_args), None)


def _zero_cotangent(a):
  if jnp.issubdtype(a.dtype, jnp.inexact):
    return jnp.zeros_like(a)
  return None


fused_loss_sum.defvjp(_fused_fwd, _fused_bwd)


# --- the loss from the row statistics ---------------------------------------------

class LossSpec(NamedTuple):
  """Static description of the per-row objective (hashable)."""
  vocab: int
  eps: float             # label smoothing
  z_loss: float


def make_row_loss(spec: LossSpec):
  """``row_loss(lse, zy, zw, (w_label, w_token, w_total, keep)) -> (ce + z-loss) per row``.

  ``w_label`` is the class weight of the label and ``w_token`` the token
  weight (both 0 at ignored positions); ``w_total`` the sum of the class
  weights (V without them), broadcast to one entry per row; rows where
  ``keep`` is False cost exactly 0.
  """
  return functools.partial(_row_loss, spec)


def _row_loss(spec: LossSpec, lse, zy, zw, row_args):
  return sum(row_terms(spec, lse, zy, zw, row_args))


def row_terms(spec: LossSpec, lse, zy, zw, row_args):
  """(cross-entropy, z-loss) per row, before masking."""
  w_label, w_token, w_total, keep = row_args
  ce = w_label * (lse - zy)
  if spec.eps != 0.0:
    ce = (1.0 - spec.eps) * ce + (spec.eps / spec.vocab) * (w_total * lse - zw)
  ce = jnp.where(keep, w_token * ce, 0.0)  # a select: NaN rows at ignored positions stay out
  if not spec.z_loss:
    return ce, jnp.zeros_like(ce)
  return ce, jnp.where(keep, spec.z_loss * w_label * w_token * jnp.square(lse), 0.0)


# --- argument checks --------------------------------------------------------------

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


def prepare_linear_ce(inputs, weight, labels, bias, class_weight, token_weight, ignore_index,
                      reduction, label_smoothing, z_loss, logit_softcap) -> Prepared:
  """Validation shared by the linear cross-entropies."""
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


def linear_cross_entropy(
    inputs: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    class_weight: ArrayLike | None = None,
    token_weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_aux: bool = False,
    chunk_size: int | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
  r"""Exact ``cross_entropy(inputs @ weight.T + bias, labels)`` in O(N * chunk) memory.

  With ``z = inputs @ weight.T + bias``, optionally capped as
  ``z = c * tanh(z / c)`` (``logit_softcap=c``), ``lse = logsumexp(z)``, class
  weights ``w`` (``class_weight``), token weights ``t`` (``token_weight``) and
  ``eps = label_smoothing``, each kept token costs

  .. math::
    t_i \Big[(1-\epsilon)\, w_{y_i} (\mathrm{lse}_i - z_{i y_i})
    + \frac{\epsilon}{V} \sum_c w_c (\mathrm{lse}_i - z_{ic})\Big]
    + a\, w_{y_i} t_i\, \mathrm{lse}_i^2

  (``a = z_loss``, PaLM's auxiliary z-loss). ``"mean"`` divides the sum by
  ``sum_i w_{y_i} t_i`` over kept tokens: torch's class-weighted mean when
  ``token_weight`` is None, the token-weighted mean ``sum(t l) / sum(t)`` when
  ``class_weight`` is None. Ignored positions (``labels == ignore_index``)
  contribute exactly 0 with zero gradients, whatever their inputs hold (NaN
  or inf at padded positions is fine).

  The ``[N, V]`` logits never exist: a forward walks the vocabulary in chunks
  with an online log-sum-exp (``-inf`` logits, e.g. banned tokens with bias
  ``-inf``, are handled exactly). Under differentiation of a reduced loss the
  gradients are computed in the same pass, a block of rows at a time (3 matrix
  products, as a dense step), and scaled by the cotangent in the backward;
  ``reduction="none"`` recomputes the logits in the backward. Half-precision
  ``inputs``/``weight`` are multiplied with float32 accumulation.

  Args:
    inputs: ``[..., D]`` features.
    weight: ``[V, D]`` output embedding (torch ``nn.Linear`` layout; for tied
      embeddings pass the input embedding table, e.g. flax ``nn.Embed``'s
      ``embedding``).
    labels: ``[...]`` integer ids in ``[0, V)`` or ``ignore_index``.
    bias: optional ``[V]``.
    class_weight: optional ``[V]`` class weights (torch's ``weight=``); not
      differentiated.
    token_weight: optional ``[...]`` per-token weights; not differentiated.
    ignore_index: label value that contributes 0 and is excluded from the mean.
    reduction: ``"mean" | "sum" | "none"``.
    label_smoothing: ``eps`` in ``[0, 1]``, a Python float (static).
    z_loss: coefficient ``a >= 0`` of ``lse**2`` (static); reduced like the loss.
    logit_softcap: ``c > 0`` or None (static): logits ``c * tanh(z / c)``
      before the softmax (Gemma 2), gradients through the cap.
    return_aux: also return a dict (not differentiated) computed in the same
      pass: ``"lse"`` ``[...]``, ``"z_loss"`` (the z-loss term, reduced like
      the loss), ``"predicted"`` ``[...]`` (arg-max id, NaN first like
      ``jnp.argmax``), ``"entropy"`` ``[...]`` of the model's distribution, and
      ``"num_tokens"`` (the mean's denominator: sum the ``"sum"`` losses of
      gradient-accumulation micro-batches and divide by their summed
      ``num_tokens`` once).
    chunk_size: vocabulary rows per chunk; default keeps about 2**21 logits
      per chunk. Need not divide V. Under differentiation of a ``"mean"`` or
      ``"sum"`` loss the one-pass gradient stores the logits of blocks of rows:
      about 2**26 of them by default (256 MiB in float32), about
      ``N * chunk_size`` when ``chunk_size`` is given.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"`` (float32 for half inputs);
    ``(loss, aux)`` with ``return_aux``. Out-of-range labels: ``ValueError``
    when concrete; NaN under ``jit``.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> x = jnp.ones((2, 3)); w = jnp.zeros((5, 3)); y = jnp.array([0, 4])
    >>> round(float(jbs.linear_cross_entropy(x, w, y, chunk_size=2)), 4)
    1.6094
    >>> loss, aux = jbs.linear_cross_entropy(x, w, y, z_loss=1e-4, return_aux=True)
    >>> sorted(aux), float(aux["num_tokens"])
    (['entropy', 'lse', 'num_tokens', 'predicted', 'z_loss'], 2.0)

  References:
    Rabe & Staats 2021 (online softmax in chunks); Wijmans et al. 2024, "Cut
    your losses in large-vocabulary language models"; Chowdhery et al. 2022
    (z-loss); Gemma Team 2024 (logit soft-capping).
  """
  p = prepare_linear_ce(inputs, weight, labels, bias, class_weight, token_weight, ignore_index,
                        reduction, label_smoothing, z_loss, logit_softcap)
  inputs = jnp.asarray(inputs)
  weight = jnp.asarray(weight)
  bias = None if bias is None else jnp.asarray(bias)
  acc = _checks.compute_dtype(inputs, weight)
  x = inputs.reshape(-1, p.d)
  y, keep, bad, row_args = flat_row_terms(p, ignore_index, acc)
  opts = Opts(choose_chunk_size(x.shape[0], p.vocab, chunk_size),
              choose_row_block(x.shape[0], p.vocab, chunk_size), p.eps != 0.0, p.softcap,
              bool(return_aux), chunk_size)
  spec = loss_spec(p)
  cw = p.class_weight
  if reduction == "none":
    stats = linear_stats(opts, x, weight, bias, y, cw, keep)
    ce, zl = row_terms(spec, stats.lse, stats.zy, stats.zw, row_args)
    return finish(ce, zl, stats, p.labels.shape, bad, keep, row_args, reduction, return_aux, acc)
  row_loss = make_row_loss(spec)
  total, stats = fused_loss_sum(opts, row_loss, x, weight, bias, y, cw, row_args, keep)
  # Rows' terms again from the (non-differentiated) stats, for the aux z-loss;
  # the differentiable total comes from the fused kernel.
  sg = lax.stop_gradient
  ce, zl = row_terms(spec, sg(stats.lse), sg(stats.zy), sg(stats.zw), row_args)
  return finish(ce, zl, stats, p.labels.shape, bad, keep, row_args, reduction, return_aux, acc,
                total=total)


def linear_argmax(
    inputs: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
  """``argmax(inputs @ weight.T + bias, -1)`` chunk by chunk (no ``[N, V]``).

  ``jnp.argmax``'s semantics: ties resolve to the smallest index, and a row
  holding a NaN logit returns the index of its first NaN.

  Args:
    inputs: ``[..., D]``; weight: ``[V, D]``; bias: optional ``[V]``.
    logit_softcap: as in :func:`linear_cross_entropy` (monotone: same arg-max).
    chunk_size: as in :func:`linear_cross_entropy`.

  Returns:
    ``[...]`` int32 class ids.
  """
  d, vocab = check_linear(inputs, weight, bias)
  check_softcap(logit_softcap)
  inputs = jnp.asarray(inputs)
  weight = jnp.asarray(weight)
  bias = None if bias is None else jnp.asarray(bias)
  lead = jnp.shape(inputs)[:-1]
  x = inputs.reshape(-1, d)
  c = choose_chunk_size(x.shape[0], vocab, chunk_size)

  def step(start, size, carry):
    return _argmax_update(*carry, _logits(x, weight, bias, start, size, None), start)

  init = (jnp.full((x.shape[0],), -jnp.inf, _checks.compute_dtype(x, weight)),
          jnp.zeros((x.shape[0],), jnp.int32))
  init = _varying_like(init, x, weight, bias)
  _, arg = _walk(step, init, vocab, c)
  return arg.reshape(lead)


def linear_top_k(
    inputs: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    k: int,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Exact top-``k`` of ``log_softmax(cap(inputs @ weight.T + bias))`` without ``[N, V]``.

  One walk over the vocabulary keeps a running top-``k`` (merged chunk by
  chunk with ``lax.top_k``) and the online log-sum-exp, so evaluation and
  decoding need no logits. Ties resolve to the smaller id, as ``lax.top_k``.

  Args:
    inputs: ``[..., D]``; weight: ``[V, D]``; bias: optional ``[V]``.
    k: how many classes, ``1 <= k <= V`` (static).
    logit_softcap: as in :func:`linear_cross_entropy`.
    chunk_size: as in :func:`linear_cross_entropy` (raised to ``k`` if smaller).

  Returns:
    ``(log_probs [..., k], ids [..., k])``, sorted by decreasing probability;
    ids int32.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> x = jnp.ones((1, 2)); w = jnp.array([[0., 0.], [1., 1.], [2., 0.], [-1., 0.]])
    >>> lp, ids = jbs.linear_top_k(x, w, k=2)
    >>> ids.tolist()
    [[1, 2]]
  """
  d, vocab = check_linear(inputs, weight, bias)
  cap = check_softcap(logit_softcap)
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
    raise ValueError(f"k must be an int in [1, V={vocab}]; got {k!r}.")
  inputs, weight = jnp.asarray(inputs), jnp.asarray(weight)
  bias = None if bias is None else jnp.asarray(bias)
  lead = jnp.shape(inputs)[:-1]
  x = inputs.reshape(-1, d)
  n = x.shape[0]
  c = max(k, choose_chunk_size(n, vocab, chunk_size))
  acc = _checks.compute_dtype(x, weight)

  def step(start, size, carry):
    vals, ids, m, s = carry
    z = _logits(x, weight, bias, start, size, cap)
    m_new = jnp.maximum(m, jnp.max(z, axis=1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    s = s * jnp.exp(m - m_safe) + jnp.sum(jnp.exp(z - m_safe[:, None]), axis=1)
    cv, ci = lax.top_k(z, min(k, size))
    # Earlier (smaller) ids first, so lax.top_k's tie rule keeps them.
    vals, pos = lax.top_k(jnp.concatenate([vals, cv], axis=1), k)
    ids = jnp.take_along_axis(jnp.concatenate([ids, start + ci.astype(jnp.int32)], axis=1),
                              pos, axis=1)
    return vals, ids, m_new, s

  # The first chunk seeds the running top-k (no placeholder ids can win a tie).
  z0 = _logits(x, weight, bias, 0, c, cap)
  vals, ids = lax.top_k(z0, k)
  m = jnp.max(z0, axis=1)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  s = jnp.sum(jnp.exp(z0 - m_safe[:, None]), axis=1)
  carry = _varying_like((vals, ids.astype(jnp.int32), m, s), x, weight, bias)
  rest = vocab - c
  if rest:
    full, tail = divmod(rest, c)
    if full:
      carry = lax.fori_loop(1, 1 + full, lambda j, cy: step(j * c, c, cy), carry)
    if tail:
      carry = step(c + full * c, tail, carry)
  vals, ids, m, s = carry
  lse = jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(s)
  log_probs = (vals - lse[:, None]).astype(acc)
  return log_probs.reshape(*lead, k), ids.reshape(*lead, k)
