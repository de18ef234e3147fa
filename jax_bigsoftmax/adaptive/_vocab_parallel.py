"""Vocabulary-parallel adaptive softmax: whole tail clusters per device, with ``shard_map``.

The tail clusters are independent, so whole clusters are assigned to the
devices of a mesh axis (largest cluster first to the least loaded device, by
parameter count). Each device keeps only its clusters' ``(proj, out)``
weights, packed into one flat row of a ``[P, L]`` buffer sharded on that axis
(:func:`pack_adaptive_tails`), evaluates the target log-probabilities of the
rows whose target lies in its clusters (the single-device blockwise kernel),
and one ``psum`` of the per-row ``[N]`` tail log-probabilities combines them.
The small head (shortlist + cluster tokens) is replicated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.sharding import check_divides, check_mesh_axes, make_varying
from jax_bigsoftmax.adaptive import _functional as _adaptive


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedAdaptiveTails:
  """Adaptive-softmax tail weights packed per device (see :func:`pack_adaptive_tails`).

  Attributes:
    buffer: ``[P, L]`` array; row ``p`` holds, flattened and concatenated, the
      ``(proj, out)`` weights of the clusters owned by shard ``p`` (zero padded
      to the longest row). Shard it with ``PartitionSpec(vocab_axis, None)``.
    in_features: D (static).
    hidden_sizes: ``hsz_i`` of every cluster (static).
    out_sizes: ``osz_i`` of every cluster (static).
    owner: the shard owning each cluster (static).
    offsets: where each cluster's ``proj`` starts in its owner's row (static).
  """
  buffer: jax.Array
  in_features: int = dataclasses.field(metadata=dict(static=True))
  hidden_sizes: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  out_sizes: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  owner: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
  offsets: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

  @property
  def num_shards(self) -> int:
    return self.buffer.shape[0]

  def cluster_slices(self, i: int) -> tuple[slice, slice]:
    """Slices of ``proj`` and ``out`` of cluster ``i`` within its owner's row."""
    d, h, o, off = self.in_features, self.hidden_sizes[i], self.out_sizes[i], self.offsets[i]
    return slice(off, off + d * h), slice(off + d * h, off + d * h + h * o)


def _assign_clusters(sizes: Sequence[int], num_shards: int) -> tuple[int, ...]:
  """Largest cluster first to the least loaded shard (ties: lowest index)."""
  load, owner = [0] * num_shards, [0] * len(sizes)
  for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    s = min(range(num_shards), key=lambda s: (load[s], s))
    owner[i], load[s] = s, load[s] + sizes[i]
  return tuple(owner)


def pack_adaptive_tails(tail_weights: Sequence[Sequence[ArrayLike]],
                        num_shards: int) -> PackedAdaptiveTails:
  """Packs ``[(proj [D, hsz_i], out [hsz_i, osz_i]), ...]`` into one row per shard.

  Clusters are assigned whole to shards, largest parameter count first to the
  least loaded shard, so the memory per shard is about ``max(largest cluster,
  total / P)``. With more shards than clusters some rows are empty padding.

  Args:
    tail_weights: the tail pairs in the layout of
      :func:`adaptive_log_softmax_with_loss`; all of one floating dtype.
    num_shards: P, the size of the mesh axis the buffer will be sharded on.

  Returns:
    A :class:`PackedAdaptiveTails` (a pytree: its ``buffer`` is the only leaf,
    so it can be a parameter, get gradients and be sharded).

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> tails = [(jnp.ones((4, 2)), jnp.ones((2, 6))), (jnp.ones((4, 1)), jnp.ones((1, 8)))]
    >>> packed = jbs.pack_adaptive_tails(tails, 2)
    >>> packed.buffer.shape, packed.owner
    ((2, 20), (0, 1))
  """
  _checks.check_count("num_shards", num_shards)
  if not isinstance(tail_weights, Sequence) or not tail_weights:
    raise ValueError(f"tail_weights must be a non-empty sequence of (proj, out) pairs; got"
                     f" {tail_weights!r}.")
  for i, pair in enumerate(tail_weights):
    if not isinstance(pair, Sequence) or len(pair) != 2:
      raise ValueError(f"tail_weights[{i}] must be a pair (proj [D, hsz], out [hsz, osz]).")
    _checks.check_ndim(f"tail_weights[{i}][0]", pair[0], ndim=2)
    _checks.check_ndim(f"tail_weights[{i}][1]", pair[1], ndim=2)
    _checks.check_floating(f"tail_weights[{i}][0]", pair[0])
    _checks.check_floating(f"tail_weights[{i}][1]", pair[1])
  d = jnp.shape(tail_weights[0][0])[0]
  hs = tuple(int(jnp.shape(p)[1]) for p, _ in tail_weights)
  os_ = tuple(int(jnp.shape(o)[1]) for _, o in tail_weights)
  for i, (p, o) in enumerate(tail_weights):
    _checks.check_shape(f"tail_weights[{i}][0]", p, (d, hs[i]), "[D, hsz]")
    _checks.check_shape(f"tail_weights[{i}][1]", o, (hs[i], os_[i]), "[hsz, osz]")
  dtypes = {jnp.result_type(w) for pair in tail_weights for w in pair}
  if len(dtypes) != 1:
    raise TypeError(f"tail_weights must share one dtype to be packed; got {sorted(map(str, dtypes))}.")
  sizes = [d * h + h * o for h, o in zip(hs, os_)]
  owner = _assign_clusters(sizes, num_shards)
  offsets, rows = [0] * len(sizes), [[] for _ in range(num_shards)]
  fill = [0] * num_shards
  for i, (p, o) in enumerate(tail_weights):
    s = owner[i]
    offsets[i], fill[s] = fill[s], fill[s] + sizes[i]
    rows[s] += [jnp.ravel(p), jnp.ravel(o)]
  length = max(max(fill), 1)
  dtype = dtypes.pop()
  buf = jnp.stack([jnp.pad(jnp.concatenate(r) if r else jnp.zeros((0,), dtype),
                           (0, length - f)) for r, f in zip(rows, fill)])
  return PackedAdaptiveTails(buf, int(d), hs, os_, owner, tuple(offsets))


def unpack_adaptive_tails(packed: PackedAdaptiveTails) -> list[tuple[jax.Array, jax.Array]]:
  """The inverse of :func:`pack_adaptive_tails`: ``[(proj, out), ...]``."""
  out = []
  for i, s in enumerate(packed.owner):
    sp, so = packed.cluster_slices(i)
    d, h, o = packed.in_features, packed.hidden_sizes[i], packed.out_sizes[i]
    out.append((packed.buffer[s, sp].reshape(d, h), packed.buffer[s, so].reshape(h, o)))
  return out


def vocab_parallel_adaptive_log_softmax_with_loss(
    input: ArrayLike,
    label: ArrayLike,
    head_weight: ArrayLike,
    tail_weights: Sequence[Sequence[ArrayLike]] | PackedAdaptiveTails,
    cutoffs: Sequence[int],
    head_bias: ArrayLike | None = None,
    *,
    mesh: Mesh,
    vocab_axis: str = "vocab",
    data_axis: str | None = None,
    capacity: int | Sequence[int] | None = None,
    ignore_index: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  r""":func:`adaptive_log_softmax_with_loss` with the tail clusters sharded over devices.

  Whole tail clusters are owned by the shards of ``vocab_axis``
  (:func:`pack_adaptive_tails`). Inside ``shard_map`` each shard evaluates
  ``log_softmax(x @ proj_i @ out_i)[y - c_i]`` for its clusters ``i``, on the
  rows whose target lies in them (the single-device blockwise kernel, a
  ``lax.switch`` on the shard index picks the shard's clusters); one ``psum``
  of the ``[N_local]`` tail log-probabilities combines them. The head
  (``[D, shortlist + n_clusters]``, small) is replicated and added outside::

    output[n] = log_softmax(x @ W_head + b)[head_idx(y)] + sum_shards tail_lp[n]

  Same ``output``, ``loss`` and gradients as the single-device function.

  Args:
    input: ``[..., D]``; rows split over ``data_axis`` when given.
    label: ``[...]`` integer targets in ``[0, n_classes)``.
    head_weight: ``[D, shortlist + n_clusters]`` (replicated).
    tail_weights: the list of ``(proj, out)`` pairs (packed here, inside the
      step: convenient but every device first holds all of them), or a
      :class:`PackedAdaptiveTails` with ``num_shards`` equal to the size of
      ``vocab_axis`` whose ``buffer`` is already sharded (the memory-saving way).
    cutoffs, head_bias, capacity, ignore_index: as in
      :func:`adaptive_log_softmax_with_loss` (capacity applies per shard to its
      local rows).
    mesh: the ``jax.sharding.Mesh``.
    vocab_axis: mesh axis over which the clusters are distributed.
    data_axis: optional mesh axis splitting the rows (2-D data x vocab mesh).

  Returns:
    ``(output [...], loss [])`` as in :func:`adaptive_log_softmax_with_loss`.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jax_bigsoftmax as jbs
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("vocab",))
    >>> head = jnp.zeros((4, 3)); tails = [(jnp.ones((4, 1)), jnp.zeros((1, 2)))]
    >>> out, loss = jbs.vocab_parallel_adaptive_log_softmax_with_loss(
    ...     jnp.ones((2, 4)), jnp.array([0, 3]), head, tails, [2, 4], mesh=mesh)
    >>> [round(float(o), 4) for o in out], round(float(loss), 4)
    ([-1.0986, -1.7918], 1.4452)

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016.
  """
  check_mesh_axes(mesh, vocab_axis, data_axis)
  n_shards = mesh.shape[vocab_axis]
  if isinstance(tail_weights, PackedAdaptiveTails):
    if tail_weights.num_shards != n_shards:
      raise ValueError(f"tail_weights is packed for {tail_weights.num_shards} shards but mesh axis"
                       f" {vocab_axis!r} has size {n_shards}.")
    packed = tail_weights
    dt = packed.buffer.dtype
    shapes = [(jax.ShapeDtypeStruct((packed.in_features, h), dt),
               jax.ShapeDtypeStruct((h, o), dt))
              for h, o in zip(packed.hidden_sizes, packed.out_sizes)]
  else:
    shapes, packed = tail_weights, None
  x, labels, bounds, lead = _adaptive._prepare(input, label, head_weight, shapes, cutoffs,
                                               head_bias)
  if packed is None:
    packed = pack_adaptive_tails(tail_weights, n_shards)
  _checks.check_labels_in_range(labels, bounds[-1], name="label", ignore_index=ignore_index)
  labels = _checks.as_index(labels)
  n = x.shape[0]
  if data_axis is not None:
    check_divides("input has N =", n, mesh, data_axis)
  n_local = n // (mesh.shape[data_axis] if data_axis else 1)
  caps = _adaptive._capacities(capacity, bounds, n_local)
  head_weight = jnp.asarray(head_weight)
  head_bias = None if head_bias is None else jnp.asarray(head_bias)
  head_lp = _adaptive.target_logprob(x, labels, head_weight, [], head_bias, bounds=bounds,
                                     caps=caps, ignore_index=ignore_index)
  cdt = _checks.compute_dtype(x, head_weight, packed.buffer)
  ignored = (jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index)
  clean = jnp.where(ignored | (labels < 0) | (labels >= bounds[-1]), -1, labels)
  clean = _checks.saturate_int32(clean)

  def shard_tails(s, x, row, y):
    acc = make_varying(jnp.zeros(y.shape, cdt), axes)  # a shard may own no cluster
    for i in (i for i, o in enumerate(packed.owner) if o == s):
      sp, so = packed.cluster_slices(i)
      h, o = packed.hidden_sizes[i], packed.out_sizes[i]
      proj, out = row[sp].reshape(packed.in_features, h), row[so].reshape(h, o)
      lo, hi = bounds[i], bounds[i + 1]
      acc = acc + _adaptive._cluster_logprob(caps[i], x, proj, out, y - lo, (y >= lo) & (y < hi))
    return acc

  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)

  def local(x, buf, y):
    # Operands vary over every mesh axis inside; autodiff psums the gradients
    # of the replicated ones (x over vocab, the tail buffer over data).
    x, buf, y = make_varying((x, buf, y), axes)
    branches = [lambda x, r, y, s=s: shard_tails(s, x, r, y) for s in range(n_shards)]
    tail = lax.switch(lax.axis_index(vocab_axis), branches, x, buf[0], y)
    return lax.psum(tail, vocab_axis)

  if n == 0:  # static: no rows, so no tails (empty outputs, as single-device)
    tail_lp = jnp.zeros((0,), head_lp.dtype)
  else:
    tail_lp = jax.shard_map(local, mesh=mesh,
                            in_specs=(P(data_axis, None), P(vocab_axis, None), P(data_axis)),
                            out_specs=P(data_axis))(x, packed.buffer, clean)
  out = head_lp + tail_lp.astype(head_lp.dtype)
  if ignore_index is None:
    loss = -jnp.mean(out)
  else:
    loss = -jnp.sum(out) / jnp.sum(labels != ignore_index)
  return jnp.reshape(out, lead), loss
