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

from jax_bigsoftmax._linear_ce import _check_linear, _chunk_logits, choose_chunk_size
from jax_bigsoftmax._sharding import make_varying
from jax_bigsoftmax._vocab_parallel import _check_mesh_axes

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
  d, vocab = _check_linear(inputs, weight, bias)
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
) -> jax.Array:
  """``log_softmax(inputs @ weight.T + bias)`` ``[..., V]``, sharded on V over ``vocab_axis``.

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
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact arg-max of ``inputs @ weight.T + bias`` with ``weight`` sharded on V.

  Each shard walks its ``V / P`` rows in chunks (never ``[N, V / P]`` logits)
  keeping an online max, arg-max and sum of ``exp``; then one ``pmax``, one
  ``psum`` and one ``pmin`` of ``[N_local]`` vectors. Ties resolve to the
  smallest index, as ``jnp.argmax``.

  Returns:
    ``(ids [...] int32, max logit [...], log-sum-exp [...])`` (float32 or wider):
    ``max - lse`` is the log-probability of the arg-max class.
  """
  lead = tuple(jnp.shape(inputs)[:-1])
  x, w, b, local_vocab = _setup(inputs, weight, bias, mesh, vocab_axis, data_axis)
  vocab = w.shape[0]
  n_local = x.shape[0] // (mesh.shape[data_axis] if data_axis else 1)
  c = choose_chunk_size(n_local, local_vocab, chunk_size)
  axes = tuple(a for a in (data_axis, vocab_axis) if a is not None)

  def local(x, w, b):
    x, w, b = make_varying((x, w, b), axes)
    n = x.shape[0]

    def body(k, carry):
      m, s, arg = carry
      z, start, _, fresh = _chunk_logits(x, w, b, k, c, local_vocab)
      z = jnp.where(fresh[None, :], z, -jnp.inf)
      j = jnp.argmax(z, axis=1)
      v = jnp.take_along_axis(z, j[:, None], axis=1)[:, 0]
      m_new = jnp.maximum(m, v)
      s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
      arg = jnp.where(v > m, start + j, arg).astype(jnp.int32)
      return m_new, s, arg

    acc = jnp.result_type(jnp.float32, x.dtype, w.dtype)
    init = make_varying((jnp.full((n,), -jnp.inf, acc), jnp.zeros((n,), acc),
                         jnp.zeros((n,), jnp.int32)), axes)
    m, s, arg = lax.fori_loop(0, -(-local_vocab // c), body, init)
    gm = lax.pmax(m, vocab_axis)
    lse = gm + jnp.log(lax.psum(s * jnp.exp(m - gm), vocab_axis))
    gid = arg + lax.axis_index(vocab_axis) * local_vocab
    ids = lax.pmin(jnp.where(m == gm, gid, vocab), vocab_axis)
    return ids, gm, lse

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
