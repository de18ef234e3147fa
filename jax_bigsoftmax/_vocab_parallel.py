"""Vocabulary-parallel exact cross-entropy (Megatron-LM style) with ``shard_map``.

``weight`` ``[V, D]`` is split on V over a mesh axis. Each device runs the
chunked :func:`linear_stats` on its own slice (its label logit only where it
owns the label) and the per-row statistics are combined with two collectives
of ``[N]``-sized vectors: a ``pmax`` of the local log-sum-exp and one ``psum``
of ``(sum-exp, label logit, weighted logit sum)``. The backward is plain
autodiff of those collectives: every device only ever touches its own slice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jax.typing import ArrayLike

from jax_bigsoftmax._exact import label_terms, reduce_loss
from jax_bigsoftmax._linear_ce import (check_linear_ce_args, choose_chunk_size, linear_stats,
                                       smoothed_rows)
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
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> jax.Array:
  r""":func:`linear_cross_entropy` with ``weight`` sharded on V over ``vocab_axis``.

  Same numbers (values and gradients) as the single-device
  ``linear_cross_entropy``. Per device, memory is ``V / P`` rows of ``weight``
  plus one ``[N_local, chunk]`` block of logits; communication is a ``pmax``
  and a ``psum`` of ``[N_local]`` / ``[3, N_local]`` vectors.

  Args:
    inputs: ``[..., D]``; rows are split over ``data_axis`` when given (the
      flattened row count must then divide by that axis' size), else replicated.
    weight: ``[V, D]``; V must divide by the size of ``vocab_axis``.
    labels: ``[...]`` integer ids in ``[0, V)`` or ``ignore_index``.
    bias: optional ``[V]`` (sharded like ``weight``).
    mesh: the ``jax.sharding.Mesh`` to run on.
    vocab_axis: mesh axis that splits the vocabulary.
    data_axis: optional mesh axis that splits the rows (2-D data x vocab mesh).
    class_weight, ignore_index, reduction, label_smoothing, chunk_size: as in
      :func:`linear_cross_entropy` (``chunk_size`` applies to each local slice).

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jax_bigsoftmax as jbs
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("vocab",))
    >>> x, w = jnp.ones((2, 3)), jnp.zeros((4, 3))
    >>> round(float(jbs.vocab_parallel_cross_entropy(x, w, jnp.array([0, 1]), mesh=mesh)), 4)
    1.3863

  References:
    Shoeybi et al. 2019, "Megatron-LM" (vocab-parallel cross-entropy).
  """
  d, vocab, labels, class_weight = check_linear_ce_args(
      inputs, weight, labels, bias, class_weight, ignore_index, reduction, label_smoothing)
  _check_mesh_axes(mesh, vocab_axis, data_axis)
  n_vocab_shards = mesh.shape[vocab_axis]
  if vocab % n_vocab_shards:
    raise ValueError(f"weight has V={vocab} rows, which does not divide by the size of mesh axis"
                     f" {vocab_axis!r} ({n_vocab_shards}).")
  x = jnp.asarray(inputs).reshape(-1, d)
  y = labels.reshape(-1).astype(jnp.int32)
  if data_axis is not None and x.shape[0] % mesh.shape[data_axis]:
    raise ValueError(f"inputs have {x.shape[0]} rows, which does not divide by the size of mesh"
                     f" axis {data_axis!r} ({mesh.shape[data_axis]}).")
  local_vocab = vocab // n_vocab_shards
  local_rows = x.shape[0] // (mesh.shape[data_axis] if data_axis else 1)
  c = choose_chunk_size(local_rows, local_vocab, chunk_size)
  eps = float(label_smoothing)
  smooth = eps != 0.0

  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)

  def local(x, w, b, y, cw):
    # Every operand varies over every mesh axis inside; autodiff then psums the
    # gradients of replicated operands (x over vocab, weight over data).
    x, w, b, y, cw = make_varying((x, w, b, y, cw), axes)
    offset = lax.axis_index(vocab_axis) * local_vocab
    lse_l, zy_l, zw_l = linear_stats(c, smooth, x, w, b, y - offset, cw)
    m = lax.pmax(lax.stop_gradient(lse_l), vocab_axis)
    sums = lax.psum(jnp.stack([jnp.exp(lse_l - m), zy_l, zw_l]), vocab_axis)
    return m + jnp.log(sums[0]), sums[1], sums[2]

  rows, vocab_rows = P(data_axis), P(vocab_axis)
  specs = (P(data_axis, None), P(vocab_axis, None),
           None if bias is None else vocab_rows, rows,
           None if class_weight is None else vocab_rows)
  lse, zy, zw = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(rows, rows, rows))(
      x, jnp.asarray(weight), None if bias is None else jnp.asarray(bias), y, class_weight)
  per_row = smoothed_rows(lse, zy, zw, y, vocab=vocab, class_weight=class_weight,
                          ignore_index=ignore_index, eps=eps)
  _, w_label, bad = label_terms(labels, vocab, class_weight, ignore_index, per_row.dtype)
  return reduce_loss(per_row.reshape(labels.shape), w_label, bad, reduction)
