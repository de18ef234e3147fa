"""Vocabulary-parallel candidate-sampling losses with ``shard_map``.

``weights`` ``[V, D]`` is split on V over a mesh axis. The T true rows of every
example and the S sampled rows are gathered from their owning shards: each
shard contributes the rows it owns and zeros elsewhere, and one ``psum`` of the
gathered ``([N, T, D], [N, T], [S, D], [S])`` rows assembles them on every
shard. The loss is then the single-device loss of those rows (the very same
code: TensorFlow's sampled softmax, or NCE). Its gradient flows back through
the ``psum`` to the owning shard only: no device ever holds more than ``V / P``
rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.sharding import Placement, check_divides, check_mesh_axes
from jax_bigsoftmax.sampled._functional import _tf_sampled_loss_from_rows, prepare_sampled_args


def vocab_parallel_sampled_softmax_loss(
    weights: ArrayLike,
    biases: ArrayLike | None,
    labels: ArrayLike,
    inputs: ArrayLike,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    remove_accidental_hits: bool = True,
    *,
    mesh: Mesh,
    vocab_axis: str = "vocab",
    data_axis: str | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
  r""":func:`sampled_softmax_loss` with ``weights`` ``[V, D]`` sharded on V.

  Every shard gathers the true and sampled rows it owns (zeros for the
  others); one ``psum`` over ``vocab_axis`` assembles them, then the loss is
  TensorFlow's::

    z_t = x . w[y_t] + b[y_t] - log Q(y_t),   z_s = x . w[c_s] + b[c_s] - log Q(c_s)
    loss = logsumexp([z_t, z_s]) - (1/T) sum_t z_t

  Given the same ``sampled_values`` (or the same ``key``), values and
  gradients equal the single-device :func:`sampled_softmax_loss`. Per device:
  ``V / P`` rows of ``weights``; communication: one ``psum`` of
  ``(N_local * T + S) * (D + 1)`` numbers forward (and its transpose, a
  broadcast, backward). The sampled logits are computed redundantly on every
  shard of ``vocab_axis`` (they are ``O(N * S * D)``, not ``O(N * V * D)``).

  Args:
    weights: ``[V, D]``; V must divide by the size of ``vocab_axis``.
    biases: ``[V]`` (sharded like ``weights``) or None.
    labels: ``[..., num_true]`` int target classes.
    inputs: ``[..., D]``; rows split over ``data_axis`` when given.
    num_sampled, num_classes, num_true, sampled_values, remove_accidental_hits, key: as
      in :func:`sampled_softmax_loss` (the sampler runs once, outside the shard_map,
      so every shard uses the same samples).
    mesh: the ``jax.sharding.Mesh``.
    vocab_axis: mesh axis splitting the vocabulary.
    data_axis: optional mesh axis splitting the rows (2-D data x vocab mesh);
      the flattened row count must divide by its size.

  Returns:
    ``[...]`` per-example losses (NaN for an out-of-range label or sample).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, jax_bigsoftmax as jbs
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("vocab",))
    >>> w, b = jnp.ones((50, 8)) * 0.1, jnp.zeros((50,))
    >>> x, y = jnp.ones((4, 8)), jnp.array([[1], [2], [3], [4]])
    >>> jbs.vocab_parallel_sampled_softmax_loss(w, b, y, x, 10, 50, mesh=mesh,
    ...                                         key=jax.random.key(0)).shape
    (4,)

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation"; Shoeybi et al. 2019, "Megatron-LM" (vocab-parallel layers).
  """
  return vocab_parallel_rows_loss(
      _tf_sampled_loss_from_rows, weights, biases, labels, inputs, num_sampled, num_classes,
      num_true, sampled_values, remove_accidental_hits, placement=check_mesh_axes(
          mesh, vocab_axis, data_axis), key=key)


def vocab_parallel_rows_loss(loss_from_rows, weights, biases, labels, inputs, num_sampled,
                             num_classes, num_true, sampled_values, remove_accidental_hits, *,
                             placement: Placement, key):
  """A candidate-sampling loss computed from the gathered rows, ``weights`` sharded on V.

  ``loss_from_rows`` is the single-device loss of the gathered true and sampled
  rows (the sampled softmax's or NCE's): the very same code runs here, on rows
  assembled by one ``psum`` of each shard's owned rows.
  """
  mesh, vocab_axis, data_axis = placement.mesh, placement.vocab_axis, placement.data_axis
  vocab, dim, sampled, true_ec, sampled_ec = prepare_sampled_args(
      weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
      remove_accidental_hits, key)
  lead = tuple(jnp.shape(inputs)[:-1])
  check_divides("weights has V =", vocab, mesh, vocab_axis)
  n_rows = int(np.prod(lead, dtype=np.int64))
  if data_axis is not None:
    check_divides("inputs have N =", n_rows, mesh, data_axis)

  x = jnp.asarray(inputs).reshape(-1, dim)
  w = jnp.asarray(weights)
  b = jnp.zeros((vocab,), w.dtype) if biases is None else jnp.asarray(biases)
  # Range masks on the ids at their own width; saturating int32 copies (an
  # int64 id 2**32 + 1 must not wrap onto row 1) for the gathers.
  lab_wide = _checks.as_index(labels).reshape(-1, num_true)
  bad = jnp.any((lab_wide < 0) | (lab_wide >= num_classes), axis=-1)
  bad |= jnp.any((sampled < 0) | (sampled >= vocab))
  lab = _checks.saturate_int32(lab_wide)
  sampled = _checks.saturate_int32(sampled)
  true_ec = true_ec.reshape(-1, num_true)
  local_vocab = vocab // mesh.shape[vocab_axis]
  def gather_owned(w_l, b_l, ids):
    """Rows ``ids`` of the global matrix where this shard owns them, else 0."""
    local = ids - lax.axis_index(vocab_axis) * local_vocab
    owned = (local >= 0) & (local < local_vocab)
    idx = jnp.clip(local, 0, local_vocab - 1)
    rows = jnp.where(owned[..., None], jnp.take(w_l, idx, axis=0), 0)
    return rows, jnp.where(owned, jnp.take(b_l, idx), 0)

  def local(x, w_l, b_l, lab, sampled, true_ec, sampled_ec):
    tw, tb = gather_owned(w_l, b_l, lab)
    sw, sb = gather_owned(w_l, b_l, sampled)
    tw, tb, sw, sb = lax.psum((tw, tb, sw, sb), vocab_axis)  # the one collective
    return loss_from_rows(x, tw, tb, sw, sb, lab, sampled, true_ec, sampled_ec,
                          remove_accidental_hits)

  rows = P(data_axis)
  specs = (P(data_axis, None), P(vocab_axis, None), P(vocab_axis), P(data_axis, None), P(),
           P(data_axis, None), P())
  loss = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=rows)(
      x, w, b, lab, sampled, true_ec, sampled_ec)
  return jnp.where(bad, jnp.nan, loss).reshape(lead)
