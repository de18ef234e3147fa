"""The chunked statistics walk: softmax statistics of a linear layer without ``[N, V]``.

Every family that needs an exact softmax over a ``[V, D]`` matrix (the exact
losses, the sampled head's evaluation, the vocabulary-parallel pieces of the
adaptive head) runs on this one kernel, plain or inside ``shard_map``
(``Opts.vocab_axis``). Two kernels share one set of per-row statistics (``RowStats``) and one
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

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.sharding import make_varying, varying_axes
from jax_bigsoftmax._core.sharding import varying_like as _varying_like

# Default vocabulary chunk: about 2**21 logits (8 MiB in float32), at least 128
# columns: a chunk's logits stay in cache while they are reduced.
CHUNK_ELEMENTS = 1 << 21
# Default row block of the one-pass gradient: about 2**26 stored logits (256 MiB
# in float32), at least 8 rows. Blocks must be tall because each one streams the
# whole weight through 3 matrix products; inside a block the vocabulary is still
# walked in cache-sized chunks. Measured trade-offs: docs/benchmarks.md.
_BLOCK_ELEMENTS = 1 << 26


def choose_chunk_size(num_rows: int, vocab: int, chunk_size: int | None,
                      elements: int | None = None) -> int:
  """The vocabulary chunk used for ``num_rows`` rows (static): ``chunk_size``, or about
  ``elements`` logits (default 2**21) per chunk."""
  if chunk_size is None:
    c = (elements or CHUNK_ELEMENTS) // max(num_rows, 1)
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


# --- top-k ------------------------------------------------------------------------

def top_k_walk(x, weight, bias, k: int, c: int, softcap):
  """Running top-``k`` of ``cap(x @ weight.T + bias)`` and its log-sum-exp, chunk by chunk.

  The same walk as the losses (its online log-sum-exp is :func:`_stats_update`)
  plus a running top-``k`` merged with ``lax.top_k``; the first chunk seeds it,
  so no placeholder id can win a tie. Returns ``(values [N, k], ids [N, k], lse [N])``.
  """
  n, vocab = x.shape[0], weight.shape[0]
  acc = _checks.compute_dtype(x, weight)
  opts = Opts(c, n, False, softcap, False)
  no_label = _varying_like(jnp.full((n,), -1, jnp.int32), x, weight, bias)

  def step(start, size, carry):
    st, vals, ids = carry
    z = _logits(x, weight, bias, start, size, softcap)
    st = _stats_update(st, z, start, no_label, None, opts)
    cv, ci = lax.top_k(z, min(k, size))
    # Earlier (smaller) ids first, so lax.top_k's tie rule keeps them.
    vals, pos = lax.top_k(jnp.concatenate([vals, cv], axis=1), k)
    ids = jnp.take_along_axis(jnp.concatenate([ids, start + ci.astype(jnp.int32)], axis=1),
                              pos, axis=1)
    return st, vals, ids

  z0 = _logits(x, weight, bias, 0, c, softcap)
  st = _stats_update(_varying_like(_stats_init(n, acc), x, weight, bias), z0, 0, no_label, None,
                     opts)
  vals, ids = lax.top_k(z0, k)
  carry = _varying_like((st, vals, ids.astype(jnp.int32)), x, weight, bias)
  full, tail = divmod(vocab - c, c)
  if full:
    carry = lax.fori_loop(1, 1 + full, lambda j, cy: step(j * c, c, cy), carry)
  if tail:
    carry = step(c + full * c, tail, carry)
  st, vals, ids = carry
  return vals, ids, _stats_final(st, opts).lse


def argmax_walk(x, weight, bias, c: int):
  """Running arg-max of ``x @ weight.T + bias`` with ``jnp.argmax``'s semantics: ``[N]`` int32."""
  def step(start, size, carry):
    return _argmax_update(*carry, _logits(x, weight, bias, start, size, None), start)

  init = (jnp.full((x.shape[0],), -jnp.inf, _checks.compute_dtype(x, weight)),
          jnp.zeros((x.shape[0],), jnp.int32))
  init = _varying_like(init, x, weight, bias)
  return _walk(step, init, weight.shape[0], c)[1]
