"""The vocabulary-sharded paths of the Flax heads (``vocab_axis`` set).

Every head with a ``mesh``/``vocab_axis``/``data_axis`` configuration calls
these functions with itself as ``cfg`` (they read those three attributes and,
where relevant, ``ignore_index`` and ``chunk_size``), so linen and NNX twins
can share them. All numerics are the vocab-parallel kernels:

* full / sampled heads: ``weight`` ``[V, D]`` sharded on rows;
  :func:`vocab_parallel_cross_entropy`, :func:`vocab_parallel_sampled_softmax_loss`,
  and the log-softmax / arg-max of ``_vocab_parallel_linear``.
* adaptive head: the head matrix ``[D, shortlist + n_clusters]`` and every
  tail output matrix ``[hsz_i, osz_i]`` sharded on columns (the classes);
  each of them is a linear softmax over its own classes, so the target
  log-probability is ``-(CE_head + CE_tail)`` with vocab-parallel
  cross-entropies (projections ``[D, hsz_i]`` are small and replicated).
  Unlike :func:`vocab_parallel_adaptive_log_softmax_with_loss` (whole
  clusters per device, packed into one buffer) this keeps the head's
  parameter names and shapes, so one checkpoint serves both heads.

The full and sampled heads need V divisible by the size of ``vocab_axis``.
An adaptive piece (head or tail cluster) whose class count does not divide
stays replicated and is padded inside the step (weight 0, bias ``-1e9``:
exactly no probability mass).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_bigsoftmax._vocab_parallel import vocab_parallel_cross_entropy
from jax_bigsoftmax._vocab_parallel_heads import vocab_parallel_sampled_softmax_loss
from jax_bigsoftmax._vocab_parallel_linear import (PAD_LOGIT, constrain_vocab_sharded, pad_vocab,
                                                   vocab_parallel_argmax,
                                                   vocab_parallel_log_softmax)

_IGNORE = -100


def check_config(cfg: Any) -> None:
  """``vocab_axis`` needs a ``mesh`` having it (and ``data_axis``); the two differ."""
  mesh, vocab_axis, data_axis = cfg.mesh, cfg.vocab_axis, cfg.data_axis
  if vocab_axis is None:
    if data_axis is not None:
      raise ValueError(f"data_axis={data_axis!r} needs vocab_axis (the head is sharded on the"
                       " vocabulary); got vocab_axis=None.")
    return
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"vocab_axis={vocab_axis!r} needs mesh, a jax.sharding.Mesh; got"
                    f" {type(mesh).__name__}.")
  types = getattr(mesh, "axis_types", None) or ()
  if any(t != jax.sharding.AxisType.Auto for t in types):
    raise ValueError(f"mesh must have Auto axes (the heads place their params with sharding"
                     f" constraints), e.g. jax.make_mesh(shape, names, axis_types="
                     f"(jax.sharding.AxisType.Auto,) * len(names)); got axis_types={types}.")
  for name, axis in (("vocab_axis", vocab_axis), ("data_axis", data_axis)):
    if axis is not None and axis not in mesh.axis_names:
      raise ValueError(f"{name}={axis!r} is not an axis of the mesh {mesh.axis_names}.")
  if vocab_axis == data_axis:
    raise ValueError(f"vocab_axis and data_axis must differ; both are {vocab_axis!r}.")


def vocab_partitioner(cfg: Any) -> Callable[..., Callable]:
  """``shard(init, shape, vocab_dim, *, name, required=True)``: ``init`` with
  ``nn.with_partitioning`` on ``vocab_dim``.

  Without ``vocab_axis`` it returns ``init`` unchanged (no metadata). A class
  count that does not divide by the size of ``vocab_axis`` raises
  ``ValueError`` (``required``) or leaves that param replicated.
  """
  check_config(cfg)

  def shard(init, shape, vocab_dim, *, name, required=True):
    if cfg.vocab_axis is None:
      return init
    if shape[vocab_dim] % _shards(cfg):
      if required:
        raise ValueError(f"{name} has {shape[vocab_dim]} classes, which does not divide by the"
                         f" size of mesh axis {cfg.vocab_axis!r} ({_shards(cfg)}); pick a"
                         " multiple of it to shard the head on the vocabulary.")
      return init
    names = tuple(cfg.vocab_axis if i == vocab_dim else None for i in range(len(shape)))
    # The mesh makes init place the param (a sharding constraint).
    return nn.with_partitioning(init, names, mesh=cfg.mesh)

  return shard


def _kw(cfg):
  return dict(mesh=cfg.mesh, vocab_axis=cfg.vocab_axis, data_axis=cfg.data_axis)


def _shards(cfg) -> int:
  return cfg.mesh.shape[cfg.vocab_axis]


# ----------------------------------------------------- full / sampled heads


def cross_entropy(cfg, x, w, b, labels, *, reduction: str, label_smoothing: float = 0.0,
                  z_loss: float = 0.0, ignore_index: int | None = None):
  """:func:`vocab_parallel_cross_entropy` of ``cap(x @ w.T + b)`` (the head's softcap)."""
  ignore = cfg.ignore_index if ignore_index is None else ignore_index
  return vocab_parallel_cross_entropy(x, w, labels, b, **_kw(cfg), ignore_index=ignore,
                                      reduction=reduction, label_smoothing=label_smoothing,
                                      z_loss=z_loss, logit_softcap=_softcap(cfg),
                                      chunk_size=getattr(cfg, "chunk_size", None))


def _softcap(cfg):
  return getattr(cfg, "logit_softcap", None)


def log_softmax(cfg, x, w, b):
  """``[..., V]`` log-probabilities, sharded on V."""
  out = vocab_parallel_log_softmax(x, w, b, **_kw(cfg), logit_softcap=_softcap(cfg))
  return constrain_vocab_sharded(out, cfg.mesh, cfg.vocab_axis, cfg.data_axis)


def argmax(cfg, x, w, b):
  """``[...]`` arg-max class ids."""
  ids, _, _ = vocab_parallel_argmax(x, w, b, **_kw(cfg),
                                    chunk_size=getattr(cfg, "chunk_size", None))
  return ids


def sampled_loss(cfg, x, w, b, labels_T, *, num_sampled, num_classes, num_true,
                 remove_accidental_hits, key):
  """TF's sampled softmax loss ``[...]`` with ``w`` sharded on V (same samples for ``key``)."""
  return vocab_parallel_sampled_softmax_loss(
      w, b, labels_T, x, num_sampled, num_classes, num_true, None, remove_accidental_hits,
      **_kw(cfg), key=key)


def mean_true_nll(cfg, x, w, b, labels_T):
  """``-(1/T) sum_t log p(y_t)`` ``[...]``, one vocab-parallel pass per true label."""
  t = labels_T.shape[-1]
  total = sum(cross_entropy(cfg, x, w, b, labels_T[..., i], reduction="none",
                            ignore_index=_IGNORE) for i in range(t))
  return total / t


# ------------------------------------------------------------ adaptive head


def _adaptive_pieces(cfg, head_w, tails, head_b):
  """Transposed ``(weight [K, d], bias [K])`` of the head and every tail, padded to a
  multiple of the axis size where they are replicated for not dividing by it."""
  p = _shards(cfg)
  head = pad_vocab(head_w.T, head_b, p)
  return head, [pad_vocab(out.T, None, p) for _, out in tails]


def adaptive_target_logprob(cfg, x, labels, head_w, tails, bounds: Sequence[int], head_b,
                            ignore_index: int | None):
  """Target log-probability ``[...]`` (0 at ``ignore_index``, NaN out of range)."""
  labels = jnp.asarray(labels).astype(jnp.int32)
  shortlist = bounds[0]
  ignored = (jnp.zeros(labels.shape, bool) if ignore_index is None
             else labels == ignore_index)
  bad = ~ignored & ((labels < 0) | (labels >= bounds[-1]))
  skip = ignored | bad
  cluster = sum((labels >= lo).astype(jnp.int32) for lo in bounds[:-1])  # 0: shortlist
  head_ids = jnp.where(cluster == 0, labels, shortlist + cluster - 1)
  (hw, hb), outs = _adaptive_pieces(cfg, head_w, tails, head_b)
  nll = cross_entropy(cfg, x, hw, hb, jnp.where(skip, _IGNORE, head_ids), reduction="none",
                      ignore_index=_IGNORE)
  for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
    h = jnp.dot(x, proj.astype(x.dtype))
    rel = jnp.where(~skip & (cluster == i + 1), labels - bounds[i], _IGNORE)
    nll = nll + cross_entropy(cfg, h, ow, ob, rel, reduction="none", ignore_index=_IGNORE)
  return jnp.where(bad, jnp.nan, -nll)


def adaptive_log_prob(cfg, x, head_w, tails, bounds: Sequence[int], head_b):
  """All ``[..., n_classes]`` log-probabilities, sharded on the classes."""
  shortlist = bounds[0]
  (hw, hb), outs = _adaptive_pieces(cfg, head_w, tails, head_b)
  head = vocab_parallel_log_softmax(x, hw, hb, **_kw(cfg))
  parts = [head[..., :shortlist]]
  for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
    tail = vocab_parallel_log_softmax(jnp.dot(x, proj.astype(x.dtype)), ow, ob, **_kw(cfg))
    osz = bounds[i + 1] - bounds[i]
    parts.append(tail[..., :osz] + head[..., shortlist + i, None])
  out = jnp.concatenate(parts, axis=-1)
  return constrain_vocab_sharded(out, cfg.mesh, cfg.vocab_axis, cfg.data_axis)


def adaptive_predict(cfg, x, head_w, tails, bounds: Sequence[int], head_b):
  """Exact arg-max ``[...]``: the best shortlist word against each cluster's best word."""
  shortlist = bounds[0]
  (hw, hb), outs = _adaptive_pieces(cfg, head_w, tails, head_b)
  kw = dict(**_kw(cfg), chunk_size=getattr(cfg, "chunk_size", None))
  # Shortlist: the arg-max over the head with the cluster tokens masked out.
  n_head = head_w.shape[1]
  masked_b = jnp.where(jnp.arange(hw.shape[0]) < shortlist, hb if hb is not None else 0.0,
                       PAD_LOGIT).astype(hw.dtype)
  short_id, short_best, _ = vocab_parallel_argmax(x, hw, masked_b, **kw)
  _, _, head_lse = vocab_parallel_argmax(x, hw, hb, **kw)
  cand, ids = [short_best - head_lse], [short_id]
  cluster_logit = jnp.dot(x, head_w[:, shortlist:n_head].astype(x.dtype),
                          preferred_element_type=jnp.float32)
  if head_b is not None:
    cb = head_b[shortlist:].astype(jnp.float32)
    cluster_logit = cluster_logit + cb.reshape((1,) * (cluster_logit.ndim - 1) + (-1,))
  for i, ((proj, _), (ow, ob)) in enumerate(zip(tails, outs)):
    tid, tbest, tlse = vocab_parallel_argmax(jnp.dot(x, proj.astype(x.dtype)), ow, ob, **kw)
    cand.append(cluster_logit[..., i] - head_lse + tbest - tlse)
    ids.append(bounds[i] + tid)
  which = jnp.argmax(jnp.stack(cand, axis=-1), axis=-1)
  return jnp.take_along_axis(jnp.stack(ids, axis=-1), which[..., None], axis=-1)[..., 0]
