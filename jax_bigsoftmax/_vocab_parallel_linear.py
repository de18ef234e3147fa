"""Vocabulary-parallel log-softmax and arg-max of a linear layer, with ``shard_map``.

The pieces the sharded Flax heads need besides the losses of
``_vocab_parallel.py``: ``log_softmax(x @ weight.T + bias)`` returned sharded
on V (the caller asked for ``[..., V]``; no device holds all of it, nor the
whole weight), and the exact arg-max (each shard walks its slice in chunks;
a ``pmax`` of the per-row maxima and a ``pmin`` of the indices achieving it
pick the smallest global index, as ``jnp.argmax``).

``pad_vocab`` lets a vocabulary that does not divide by the mesh axis be
sharded anyway: padded rows get weight 0 and bias ``-1e9``, which adds
exactly 0 to every sum of ``exp`` and can never win an arg-max.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.typing import ArrayLike

from jax_bigsoftmax._linear_ce import Opts, check_linear, choose_chunk_size, linear_stats
from jax_bigsoftmax._sharding import make_varying
from jax_bigsoftmax._vocab_parallel import _check_mesh_axes, combine_row_stats

PAD_LOGIT = -1e9  # bias of a padding row: exp(PAD_LOGIT - max) is exactly 0


def padded_size(vocab: int, num_shards: int) -> int:
  return -(-vocab // num_shards) * num_shards


def pad_vocab(weight: jax.Array, bias: jax.Array | None, num_shards: int, *,
              force_bias: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """Pads ``weight`` ``[V, D]`` (and ``bias``) to a multiple of ``num_shards`` rows.

  Padding rows have weight 0 and bias :data:`PAD_LOGIT`; a bias is created
  when padding is needed (or ``force_bias``). Without padding the arrays are
  returned as they are.
  """
  vocab = weight.shape[0]
  extra = padded_size(vocab, num_shards) - vocab
  if extra == 0 and not (force_bias and bias is None):
    return weight, bias
  if bias is None:
    bias = jnp.zeros((vocab,), weight.dtype)
  weight = jnp.pad(weight, ((0, extra), (0, 0)))
  bias = jnp.pad(bias, (0, extra), constant_values=PAD_LOGIT)
  return weight, bias


def _setup(inputs, weight, bias, mesh, vocab_axis, data_axis):
  d, vocab = check_linear(inputs, weight, bias)
  _check_mesh_axes(mesh, vocab_axis, data_axis)
  if vocab % mesh.shape[vocab_axis]:
    raise ValueError(f"weight has V={vocab} rows, which does not divide by the size of mesh axis"
                     f" {vocab_axis!r} ({mesh.shape[vocab_axis]}); pad it with pad_vocab.")
  x = jnp.asarray(inputs).reshape(-1, d)
  if data_axis is not None and x.shape[0] % mesh.shape[data_axis]:
    raise ValueError(f"inputs have {x.shape[0]} rows, which does not divide by the size of mesh"
                     f" axis {data_axis!r} ({mesh.shape[data_axis]}).")
  w = jnp.asarray(weight)
  b = jnp.zeros((vocab,), w.dtype) if bias is None else jnp.asarray(bias)
  return x, w, b, vocab // mesh.shape[vocab_axis]


def vocab_parallel_log_softmax(
    inputs: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    mesh: Mesh,
    vocab_axis: str,
    data_axis: str | None = None,
    logit_softcap: float | None = None,
) -> jax.Array:
  """``log_softmax(cap(inputs @ weight.T + bias))`` ``[..., V]``, sharded on V over ``vocab_axis``.

  Each shard computes its ``[N_local, V / P]`` block of logits and its local
  log-sum-exp; a ``pmax`` and a ``psum`` of ``[N_local]`` vectors give the
  global one. The result stays sharded ``P(data_axis, vocab_axis)``.
  Differentiable (plain autodiff through the collectives).
  """
  lead = jnp.shape(inputs)[:-1]
  x, w, b, _ = _setup(inputs, weight, bias, mesh, vocab_axis, data_axis)
  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)

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
    inputs: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    mesh: Mesh,
    vocab_axis: str,
    data_axis: str | None = None,
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
  x, w, b, local_vocab = _setup(inputs, weight, bias, mesh, vocab_axis, data_axis)
  n_local = x.shape[0] // (mesh.shape[data_axis] if data_axis else 1)
  opts = Opts(choose_chunk_size(n_local, local_vocab, chunk_size), n_local, False,
              logit_softcap, True)
  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)

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


def constrain_vocab_sharded(x: jax.Array, mesh: Mesh, vocab_axis: str,
                            data_axis: str | None) -> jax.Array:
  """Places ``[..., V]`` sharded on V (and its leading rows on ``data_axis``)."""
  spec = P(*([None] * (x.ndim - 1)), vocab_axis)
  if data_axis is not None and x.ndim > 1 and x.shape[0] % mesh.shape[data_axis] == 0:
    spec = P(data_axis, *([None] * (x.ndim - 2)), vocab_axis)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
