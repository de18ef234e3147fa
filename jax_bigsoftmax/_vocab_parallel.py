"""Vocabulary-parallel exact cross-entropy (Megatron-LM style) with ``shard_map``.

``weight`` ``[V, D]`` is split on V over a mesh axis. Each device runs the
chunked vocabulary walk on its own slice (its label logit only where it
owns the label) and the per-row statistics are combined with two collectives
of ``[N]``-sized vectors: a ``pmax`` of the local log-sum-exp and one ``psum``
of ``(sum-exp, label logit, weighted logit sum)``. For ``"mean"``/``"sum"``
losses this happens per block of rows inside the one-pass gradient
(:func:`fused_loss_sum`: 3 matrix products per shard, the backward only scales);
for ``"none"`` the backward is plain autodiff of those collectives over the
recomputing walk. Either way every device only ever touches its own slice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks
from jax_bigsoftmax._linear_ce import (Opts, RowStats, choose_chunk_size, choose_row_block,
                                       combine_row_stats, finish, flat_row_terms,
                                       fused_loss_sum, linear_stats, loss_spec,
                                       make_row_loss, prepare_linear_ce, row_terms)
from jax_bigsoftmax._sharding import make_varying


def _check_mesh_axes(mesh: Mesh, vocab_axis: str, data_axis: str | None) -> None:
  for name, axis in (("vocab_axis", vocab_axis), ("data_axis", data_axis)):
    if axis is not None and axis not in mesh.axis_names:
      raise ValueError(f"{name}={axis!r} is not an axis of the mesh {mesh.axis_names}.")
  if vocab_axis == data_axis:
    raise ValueError(f"vocab_axis and data_axis must differ; both are {vocab_axis!r}.")


def vocab_parallel_cross_entropy(
    inputs: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    mesh: Mesh,
    vocab_axis: str = "vocab",
    data_axis: str | None = None,
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
  r""":func:`linear_cross_entropy` with ``weight`` sharded on V over ``vocab_axis``.

  Same numbers (values and gradients) and the same options as the
  single-device ``linear_cross_entropy``. Per device, memory is ``V / P`` rows
  of ``weight`` plus one ``[N_local, chunk]`` block of logits; communication
  is a ``pmax`` and a ``psum`` of ``[N_local]`` / ``[3, N_local]`` vectors
  (two more small collectives for the arg-max with ``return_aux``). The
  backward recomputes each shard's logits (the one-pass gradient of the
  single-device function is not used here).

  Args:
    inputs: ``[..., D]``; rows are split over ``data_axis`` when given (the
      flattened row count must then divide by that axis' size), else replicated.
    weight: ``[V, D]``; V must divide by the size of ``vocab_axis``.
    labels: ``[...]`` integer ids in ``[0, V)`` or ``ignore_index``.
    bias: optional ``[V]`` (sharded like ``weight``).
    mesh: the ``jax.sharding.Mesh`` to run on.
    vocab_axis: mesh axis that splits the vocabulary.
    data_axis: optional mesh axis that splits the rows (2-D data x vocab mesh).
    class_weight, token_weight, ignore_index, reduction: as in :func:`linear_cross_entropy`.
    label_smoothing, z_loss, logit_softcap, return_aux: as in :func:`linear_cross_entropy`.
    chunk_size: as in :func:`linear_cross_entropy`, for each local slice.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``; ``(loss, aux)`` with
    ``return_aux``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jax_bigsoftmax as jbs
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("vocab",))
    >>> x, w = jnp.ones((2, 3)), jnp.zeros((4, 3))
    >>> round(float(jbs.vocab_parallel_cross_entropy(x, w, jnp.array([0, 1]), mesh=mesh)), 4)
    1.3863

  References:
    Shoeybi et al. 2019, "Megatron-LM" (vocab-parallel cross-entropy).
  """
  p = prepare_linear_ce(inputs, weight, labels, bias, class_weight, token_weight, ignore_index,
                        reduction, label_smoothing, z_loss, logit_softcap)
  _check_mesh_axes(mesh, vocab_axis, data_axis)
  vocab = p.vocab
  n_vocab_shards = mesh.shape[vocab_axis]
  if vocab % n_vocab_shards:
    raise ValueError(f"weight has V={vocab} rows, which does not divide by the size of mesh axis"
                     f" {vocab_axis!r} ({n_vocab_shards}).")
  inputs, weight = jnp.asarray(inputs), jnp.asarray(weight)
  acc = _checks.compute_dtype(inputs, weight)
  x = inputs.reshape(-1, p.d)
  y, keep, bad, row_args = flat_row_terms(p, ignore_index, acc)
  if data_axis is not None and x.shape[0] % mesh.shape[data_axis]:
    raise ValueError(f"inputs have {x.shape[0]} rows, which does not divide by the size of mesh"
                     f" axis {data_axis!r} ({mesh.shape[data_axis]}).")
  local_vocab = vocab // n_vocab_shards
  local_rows = x.shape[0] // (mesh.shape[data_axis] if data_axis else 1)
  aux = bool(return_aux)
  opts = Opts(choose_chunk_size(local_rows, local_vocab, chunk_size),
              choose_row_block(local_rows, local_vocab, chunk_size), p.eps != 0.0, p.softcap, aux,
              chunk_size, vocab_axis)
  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)
  spec = loss_spec(p)
  fused = reduction != "none"
  row_loss = make_row_loss(spec) if fused else None

  def local(x, w, b, y, cw, keep, row_args):
    # Every operand varies over every mesh axis inside; autodiff then psums the
    # gradients of replicated operands (x over vocab, weight over data).
    x, w, b, y, cw, keep = make_varying((x, w, b, y, cw, keep), axes)
    offset = lax.axis_index(vocab_axis) * local_vocab
    y_local = jnp.where(y >= 0, y - offset, -1)
    if fused:  # one-pass gradients; the loss sum of this device's rows
      total, stats = fused_loss_sum(opts, row_loss, x, w, b, y_local, cw, row_args, keep)
      return total[None], stats
    stats = linear_stats(opts, x, w, b, y_local, cw, keep)
    return jnp.zeros((1,), stats.lse.dtype), combine_row_stats(stats, offset, vocab_axis, aux)

  rows, vocab_rows = P(data_axis), P(vocab_axis)
  specs = (P(data_axis, None), P(vocab_axis, None),
           None if bias is None else vocab_rows, rows,
           None if p.class_weight is None else vocab_rows, rows, (rows,) * len(row_args))
  total, stats = jax.shard_map(local, mesh=mesh, in_specs=specs,
                               out_specs=(rows, RowStats(*[rows] * 6)))(
      x, weight, None if bias is None else jnp.asarray(bias), y, p.class_weight, keep, row_args)
  sg = lax.stop_gradient
  ce, zl = row_terms(spec, sg(stats.lse), sg(stats.zy), sg(stats.zw), row_args) if fused else \
      row_terms(spec, stats.lse, stats.zy, stats.zw, row_args)
  return finish(ce, zl, stats, p.labels.shape, bad, keep, row_args, reduction, return_aux, acc,
                total=jnp.sum(total) if fused else None)
