"""Exact cross-entropy of a linear layer, its arg-max and top-k, without ``[N, V]`` logits.

Each entry point validates its arguments once and runs the chunked statistics
walk (:mod:`jax_bigsoftmax._core.walk`); :func:`linear_cross_entropy` and
:func:`vocab_parallel_cross_entropy` are the same body
(:func:`jax_bigsoftmax._core.linear.run_linear_ce`), run on one device or
under ``shard_map`` with the vocabulary split over a mesh axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.linear import (LinearSoftmax, check_linear, check_softcap,
                                         prepare_linear_ce, run_linear_ce)
from jax_bigsoftmax._core.sharding import check_mesh_axes
from jax_bigsoftmax._core.walk import choose_chunk_size, top_k_walk


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
  return run_linear_ce(p, inputs, weight, bias, ignore_index, reduction, return_aux, chunk_size,
                       placement=None)


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
  check_softcap(logit_softcap)
  return LinearSoftmax(chunk_size=chunk_size).argmax(inputs, weight, bias)


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
  c = max(k, choose_chunk_size(x.shape[0], vocab, chunk_size))
  vals, ids, lse = top_k_walk(x, weight, bias, k, c, cap)
  log_probs = (vals - lse[:, None]).astype(_checks.compute_dtype(x, weight))
  return log_probs.reshape(*lead, k), ids.reshape(*lead, k)


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
  (two more small collectives for the arg-max with ``return_aux``).
  ``"mean"``/``"sum"`` losses take the one-pass gradient of the single-device
  function, their statistics combined across the shards per row block;
  ``"none"`` recomputes each shard's logits in the backward.

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
  placement = check_mesh_axes(mesh, vocab_axis, data_axis)
  return run_linear_ce(p, inputs, weight, bias, ignore_index, reduction, return_aux, chunk_size,
                       placement)
