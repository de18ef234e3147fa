"""Candidate-sampling losses: TensorFlow's ``sampled_softmax_loss``, ``nce_loss``,
``compute_sampled_logits`` and ``compute_accidental_hits``, and Paddle's
``sampled_softmax_with_cross_entropy`` (Jean et al. 2014; Gutmann & Hyvarinen 2010).

Both score the T true classes and S sampled negatives shared by the batch,
subtract ``log Q`` (the expected count of each class in the sample), optionally
mask accidental hits (a sampled class equal to one of the row's targets), and
take the soft-label cross-entropy with weight ``1/T`` on every target::

  z_j  = logit(c_j) - log Q(c_j)          c = [targets (T), samples (S)]
  loss = logsumexp_j(z_j) - (1/T) sum_{t<T} z_t

NCE takes the sigmoid cross-entropy of the same logits instead (labels ``1/T``
on the targets, 0 on the samples); both TF losses are built on one
``_sampled_logits_from_rows``. ``weights``/``biases`` may be lists of row
shards (TF's ``partition_strategy="div"``): rows are gathered from the shard
that holds them. Out-of-range labels/samples yield NaN (eagerly, and under ``checked``, a
ValueError / checkify error instead).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax.sampled._samplers import log_uniform_candidate_sampler

# TF's compute_accidental_hits weight (-FLT_MAX) and Paddle's hit offset / inf clip.
_TF_HIT = -float(np.finfo(np.float32).max)
_PADDLE_HIT = 1e20


def _last_occurrence(sampled_S: jax.Array) -> jax.Array:
  """True at the last position of each distinct value (TF's hit bookkeeping)."""
  order = jnp.argsort(sampled_S, stable=True)
  s = sampled_S[order]
  last_sorted = jnp.concatenate([s[:-1] != s[1:], jnp.ones((1,), bool)])
  return jnp.zeros(sampled_S.shape, bool).at[order].set(last_sorted)


def _hits_mask(labels_xT: jax.Array, sampled_S: jax.Array) -> jax.Array:
  """``[..., S]`` True where TF's ``compute_accidental_hits`` reports (row, s)."""
  as_row = lambda v: v.reshape((1,) * (labels_xT.ndim - 1) + (-1,))  # noqa: E731
  hit = jnp.zeros(labels_xT.shape[:-1] + sampled_S.shape, bool)
  for t in range(labels_xT.shape[-1]):
    hit |= labels_xT[..., t, None] == as_row(sampled_S)
  return hit & as_row(_last_occurrence(sampled_S))


def _soft_label_ce(true_NxT: jax.Array, neg_NxS: jax.Array) -> jax.Array:
  """logsumexp([true, neg]) - mean(true) along the last axis, without a concat."""
  lse = jnp.logaddexp(jax.nn.logsumexp(true_NxT, axis=-1), jax.nn.logsumexp(neg_NxS, axis=-1))
  return lse - jnp.mean(true_NxT, axis=-1)


def _sigmoid_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """TF's ``sigmoid_cross_entropy_with_logits``: max(z, 0) - z y + log1p(exp(-|z|))."""
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _sampled_logits_from_rows(x_NxD, true_w_NxTxD, true_b_NxT, sampled_w_SxD, sampled_b_S,
                              labels_NxT, sampled_S, true_ec_NxT, sampled_ec_S,
                              subtract_log_q: bool, remove_accidental_hits: bool):
  """TF's ``_compute_sampled_logits`` from the gathered rows: ``(true [N, T], sampled [N, S])``.

  The one implementation behind ``compute_sampled_logits``, ``sampled_softmax_loss``,
  ``nce_loss``, the row path and the vocabulary-parallel loss.
  """
  acc = _checks.compute_dtype(x_NxD, true_w_NxTxD)
  # Row-wise dot products as a batched dot, not a multiply + sum: XLA:CPU can fuse the
  # latter into the whole forward and pick a slow kernel for it on some processors.
  true_logits = jnp.einsum("nd,ntd->nt", x_NxD, true_w_NxTxD, preferred_element_type=acc)
  true_logits = true_logits + true_b_NxT.astype(acc)
  sampled_logits = jnp.dot(x_NxD, sampled_w_SxD.T,
                           preferred_element_type=acc) + sampled_b_S.astype(acc)[None, :]
  if remove_accidental_hits:
    hit = _hits_mask(labels_NxT, sampled_S)
    sampled_logits = jnp.where(hit, sampled_logits + jnp.asarray(_TF_HIT, acc), sampled_logits)
  if subtract_log_q:
    true_logits = true_logits - jnp.log(true_ec_NxT.astype(acc))
    sampled_logits = sampled_logits - jnp.log(sampled_ec_S.astype(acc))[None, :]
  return true_logits, sampled_logits


def _tf_sampled_loss_from_rows(x_NxD, true_w_NxTxD, true_b_NxT, sampled_w_SxD, sampled_b_S,
                               labels_NxT, sampled_S, true_ec_NxT, sampled_ec_S,
                               remove_accidental_hits: bool) -> jax.Array:
  """TF's sampled softmax from the gathered rows (the part that is differentiated)."""
  return _soft_label_ce(*_sampled_logits_from_rows(
      x_NxD, true_w_NxTxD, true_b_NxT, sampled_w_SxD, sampled_b_S, labels_NxT, sampled_S,
      true_ec_NxT, sampled_ec_S, True, remove_accidental_hits))


def _shards(name: str, table, ndim: int) -> list:
  """``table`` as a list of row shards (TF's list of partitions, "div" layout), validated."""
  shards = list(table) if isinstance(table, (list, tuple)) else [table]
  if not shards:
    raise ValueError(f"{name} must be an array or a non-empty list of shards; got [].")
  for i, w in enumerate(shards):
    nm = name if len(shards) == 1 else f"{name}[{i}]"
    _checks.check_floating(nm, w)
    _checks.check_ndim(nm, w, ndim=ndim)
  tail = {tuple(jnp.shape(w)[1:]) for w in shards}
  if len(tail) != 1:
    raise ValueError(f"{name} shards must agree on every dimension but the first; got shapes"
                     f" {[tuple(jnp.shape(w)) for w in shards]}.")
  return shards


def _num_rows(shards) -> int:
  return sum(int(jnp.shape(w)[0]) for w in shards)


def prepare_sampled_args(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                         sampled_values, remove_accidental_hits, key, *, allow_shards=False):
  """Validates ``sampled_softmax_loss``'s arguments; draws the samples if not given.

  ``weights`` / ``biases`` may be lists of row shards when ``allow_shards``.

  Returns ``(V, D, sampled [S], true_expected_count [..., T], sampled_expected_count [S])``.
  """
  _checks.check_count("num_sampled", num_sampled)
  _checks.check_count("num_classes", num_classes, 2)
  _checks.check_count("num_true", num_true)
  _checks.check_bool("remove_accidental_hits", remove_accidental_hits)
  if not allow_shards and any(isinstance(a, (list, tuple)) for a in (weights, biases)):
    raise TypeError("weights and biases must be arrays here (lists of shards are accepted by"
                    " sampled_softmax_loss, nce_loss and compute_sampled_logits).")
  w_shards = _shards("weights", weights, 2)
  _checks.check_floating("inputs", inputs)
  _checks.check_integer("labels", labels)
  _checks.check_ndim("inputs", inputs, min_ndim=1)
  vocab, dim = _num_rows(w_shards), jnp.shape(w_shards[0])[1]
  if jnp.shape(inputs)[-1] != dim:
    raise ValueError(
        f"inputs must have shape [..., D] with D = weights.shape[1] = {dim}; got"
        f" {jnp.shape(inputs)}.")
  if num_classes > vocab:
    raise ValueError(
        f"num_classes must be <= weights.shape[0] = {vocab}; got num_classes={num_classes}.")
  lead = tuple(jnp.shape(inputs)[:-1])
  _checks.check_shape("labels", labels, lead + (num_true,), "[..., num_true]")
  if biases is not None:
    b_rows = _num_rows(_shards("biases", biases, 1))
    if b_rows != vocab:
      raise ValueError(f"biases must have {vocab} entries in all (weights' rows [V]); got"
                       f" {b_rows}.")
  _checks.check_labels_in_range(labels, num_classes, name="labels")

  if sampled_values is None:
    if key is None:
      raise ValueError(
          "key must be a jax.random key when sampled_values is None (the sampler needs"
          " randomness); got key=None.")
    if num_sampled >= num_classes:
      raise ValueError(
          f"num_sampled must be < num_classes for unique sampling; got num_sampled={num_sampled},"
          f" num_classes={num_classes}.")
    sampled_values = log_uniform_candidate_sampler(key, labels, num_true, num_sampled, True,
                                                   num_classes)
  sampled, true_ec, sampled_ec = _unpack_sampled_values(sampled_values, lead + (num_true,),
                                                        num_sampled)
  _checks.check_labels_in_range(sampled, vocab, name="sampled_values[0]")
  return vocab, dim, sampled, true_ec, sampled_ec


def _unpack_sampled_values(sampled_values, labels_shape, num_sampled=None):
  """Checks a sampler's ``(sampled [S], true_expected_count, sampled_expected_count [S])``."""
  if not isinstance(sampled_values, (tuple, list)) or len(sampled_values) != 3:
    raise ValueError("sampled_values must be a tuple (sampled, true_expected_count,"
                     f" sampled_expected_count); got {type(sampled_values).__name__}.")
  sampled, true_ec, sampled_ec = (jax.lax.stop_gradient(_checks.as_index(v))
                                  for v in sampled_values)
  _checks.check_integer("sampled_values[0]", sampled)
  if num_sampled is None:
    _checks.check_ndim("sampled_values[0]", sampled, ndim=1)
    num_sampled = sampled.shape[0]
  _checks.check_shape("sampled_values[0]", sampled, (num_sampled,), "[num_sampled]")
  _checks.check_shape("sampled_values[1]", true_ec, labels_shape, "labels' shape")
  _checks.check_shape("sampled_values[2]", sampled_ec, (num_sampled,), "[num_sampled]")
  return sampled, true_ec, sampled_ec

def sampled_softmax_loss(
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
    key: jax.Array | None = None,
) -> jax.Array:
  r"""Sampled softmax training loss, ``tf.nn.sampled_softmax_loss`` semantics.

  Only the T true rows and the S sampled rows of ``weights`` are gathered, so
  the cost is O(N * D * (S + T)), never O(N * V)::

    z_t = x . w[y_t] + b[y_t] - log Q(y_t)          (t < T)
    z_s = x . w[c_s] + b[c_s] - log Q(c_s)          (-FLT_MAX added on a hit)
    loss = logsumexp([z_t, z_s]) - (1/T) sum_t z_t

  Given the same ``sampled_values``, the numbers and gradients are those of
  TensorFlow (fixtures in ``tests/fixtures/sampled_tf.npz``), including TF's
  accidental-hit bookkeeping: when the sampled candidates contain a value more
  than once (only possible with ``unique=False`` samplers), TF masks only its
  last occurrence, and so do we. This is a training loss: at evaluation time use
  the exact loss (``linear_cross_entropy``), as TF's documentation advises.

  ``jax.grad`` with respect to ``weights`` is a dense ``[V, D]`` array (zero
  outside the gathered rows). For TensorFlow's sparse ``IndexedSlices``
  gradients, differentiate :func:`sampled_softmax_loss_from_rows` with respect
  to :func:`gather_sampled_rows` instead and apply them with
  :func:`scatter_add_sampled_rows`.

  Args:
    weights: ``[V, D]`` class embeddings (only gathered rows get gradient), or
      a list of row shards ``[V_p, D]`` (TF's ``partition_strategy="div"``),
      used without concatenating.
    biases: ``[V]`` class biases, a list of ``[V_p]`` shards, or None (no bias).
    labels: ``[..., num_true]`` int target classes.
    inputs: ``[..., D]`` activations.
    num_sampled: S, the number of sampled classes.
    num_classes: the number of classes the sampler draws from (``<= V``).
    num_true: T, targets per example (each gets target probability ``1/T``).
    sampled_values: ``(sampled [S], true_expected_count [..., T],
      sampled_expected_count [S])`` from a ``*_candidate_sampler``; if None,
      ``log_uniform_candidate_sampler(key, labels, T, S, True, num_classes)``.
    remove_accidental_hits: mask sampled classes equal to one of the targets.
    key: ``jax.random`` key; required when ``sampled_values`` is None.

  Returns:
    ``[...]`` per-example losses (TF's ``[N]`` for ``[N, D]`` inputs).

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> w, b = jnp.ones((50, 8)) * 0.1, jnp.zeros((50,))
    >>> x, y = jnp.ones((4, 8)), jnp.array([[1], [2], [3], [4]])
    >>> jbs.sampled_softmax_loss(w, b, y, x, 10, 50, key=jax.random.key(0)).shape
    (4,)

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation"; TensorFlow ``nn_impl._compute_sampled_logits``.
  """
  true_logits, sampled_logits = _sampled_logits(
      weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, True,
      remove_accidental_hits, key)
  return _soft_label_ce(true_logits, sampled_logits)


def _sampled_logits(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                    sampled_values, subtract_log_q, remove_accidental_hits, key):
  """Validates, samples, gathers the rows, and returns ``(true [..., T], sampled [..., S])``.

  Rows with a label in ``[num_classes, V)`` (a row exists but the sampler's
  range excludes it) are NaN.
  """
  _checks.check_bool("subtract_log_q", subtract_log_q)
  _, _, sampled, true_ec, sampled_ec = prepare_sampled_args(
      weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
      remove_accidental_hits, key, allow_shards=True)
  lab = jnp.asarray(labels)
  rows = _gather_rows(weights, biases, lab, sampled)
  true_logits, sampled_logits = _logits_from_rows(
      rows, lab, sampled, jnp.asarray(inputs), true_ec, sampled_ec, subtract_log_q,
      remove_accidental_hits)
  bad = jnp.any(lab >= num_classes, axis=-1, keepdims=True)
  return jnp.where(bad, jnp.nan, true_logits), jnp.where(bad, jnp.nan, sampled_logits)


def compute_sampled_logits(
    weights: ArrayLike | list,
    biases: ArrayLike | list | None,
    labels: ArrayLike,
    inputs: ArrayLike,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = False,
    *,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""The logits and labels of a sampled loss (TensorFlow's ``_compute_sampled_logits``).

  For every example, the T true classes then the S sampled classes (shared by
  the batch)::

    logits[..., j] = x . w[c_j] + b[c_j]   (- log Q(c_j) if subtract_log_q)
                                           (-FLT_MAX on an accidental hit)
    labels[..., j] = 1/T for j < T, else 0

  ``sampled_softmax_loss`` is the softmax cross-entropy of these and
  ``nce_loss`` their sigmoid cross-entropy; all three share this one
  implementation (and the row gather of :func:`gather_sampled_rows`). Given the
  same ``sampled_values``, the numbers are TensorFlow's (fixtures in
  ``tests/fixtures/nce_tf.npz``); accidental hits follow
  :func:`compute_accidental_hits`.

  Args:
    weights: ``[V, D]`` class embeddings, or a list of row shards ``[V_p, D]``
      (TF's ``partition_strategy="div"`` layout; used without concatenating).
    biases: ``[V]`` class biases, a list of ``[V_p]`` shards, or None (no bias).
    labels: ``[..., num_true]`` int target classes.
    inputs: ``[..., D]`` activations.
    num_sampled: S.
    num_classes: the sampler's range (``<= V``); labels in ``[num_classes, V)``
      make their row NaN.
    num_true: T.
    sampled_values: ``(sampled [S], true_expected_count [..., T],
      sampled_expected_count [S])``; if None,
      ``log_uniform_candidate_sampler(key, labels, T, S, True, num_classes)``.
    subtract_log_q: subtract ``log Q`` (the expected counts).
    remove_accidental_hits: add ``-FLT_MAX`` to sampled logits that hit a target.
    key: ``jax.random`` key; required when ``sampled_values`` is None.

  Returns:
    ``(logits [..., T+S], labels [..., T+S])`` in the compute dtype (float32
    for half-precision inputs).

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> w, b = jnp.ones((50, 8)) * 0.1, jnp.zeros((50,))
    >>> x, y = jnp.ones((4, 8)), jnp.array([[1], [2], [3], [4]])
    >>> logits, labels = jbs.compute_sampled_logits(w, b, y, x, 10, 50, key=jax.random.key(0))
    >>> logits.shape, labels[0, :3].tolist()
    ((4, 11), [1.0, 0.0, 0.0])

  References:
    TensorFlow ``nn_impl._compute_sampled_logits``.
  """
  return _concat_logits(*_sampled_logits(
      weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
      subtract_log_q, remove_accidental_hits, key))


def _concat_logits(true_logits, sampled_logits):
  """TF's ``(logits [..., T+S], labels [..., T+S])``: targets first, label ``1/T`` each."""
  num_true = true_logits.shape[-1]
  logits = jnp.concatenate([true_logits, sampled_logits], axis=-1)
  out_labels = jnp.concatenate([jnp.full(true_logits.shape, 1.0 / num_true, logits.dtype),
                                jnp.zeros(sampled_logits.shape, logits.dtype)], axis=-1)
  return logits, out_labels


def _nce_from_logits(true_logits, sampled_logits):
  """NCE: the binary logistic loss of the targets against the noise classes, summed."""
  return jnp.sum(_sigmoid_ce(*_concat_logits(true_logits, sampled_logits)), axis=-1)


def _nce_loss_from_rows(x_NxD, true_w_NxTxD, true_b_NxT, sampled_w_SxD, sampled_b_S,
                        labels_NxT, sampled_S, true_ec_NxT, sampled_ec_S,
                        remove_accidental_hits: bool) -> jax.Array:
  """NCE from the gathered rows (the part that is differentiated)."""
  return _nce_from_logits(*_sampled_logits_from_rows(
      x_NxD, true_w_NxTxD, true_b_NxT, sampled_w_SxD, sampled_b_S, labels_NxT, sampled_S,
      true_ec_NxT, sampled_ec_S, True, remove_accidental_hits))


def nce_loss(
    weights: ArrayLike | list,
    biases: ArrayLike | list | None,
    labels: ArrayLike,
    inputs: ArrayLike,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    remove_accidental_hits: bool = False,
    *,
    key: jax.Array | None = None,
) -> jax.Array:
  r"""Noise-contrastive estimation loss, ``tf.nn.nce_loss`` semantics.

  A binary logistic loss of the true classes (label ``1/T`` each) against the
  S sampled noise classes (label 0), on logits corrected by ``log Q``
  (:func:`compute_sampled_logits` with ``subtract_log_q=True``)::

    z_j  = x . w[c_j] + b[c_j] - log Q(c_j)          c = [targets (T), samples (S)]
    loss = sum_j max(z_j, 0) - z_j y_j + log(1 + exp(-|z_j|)),   y = [1/T]*T + [0]*S

  Only the T true rows and the S sampled rows of ``weights`` are touched.
  Given the same ``sampled_values``, values and gradients are TensorFlow's
  (fixtures ``tests/fixtures/nce_tf.npz``: T = 1 and 3, hits removed or not,
  float32 and float64, sharded weights). With ``remove_accidental_hits`` a
  sampled class equal to a target gets ``-FLT_MAX``, i.e. contributes 0. As in
  TF, the default sampler is log-uniform (``unique=True``): word2vec's
  negative sampling uses ``fixed_unigram_candidate_sampler(...,
  distortion=0.75)`` instead. This is a training loss; evaluate with the exact
  softmax (:class:`NCELoss` with ``deterministic=True``).

  Args:
    weights: ``[V, D]`` class embeddings, or a list of row shards ``[V_p, D]``
      (TF's ``partition_strategy="div"``), used without concatenating.
    biases: ``[V]`` class biases, a list of ``[V_p]`` shards, or None (no bias).
    labels: ``[..., num_true]`` int target classes.
    inputs: ``[..., D]`` activations.
    num_sampled: S, noise classes per batch.
    num_classes: the sampler's range (``<= V``).
    num_true: T, targets per example.
    sampled_values: ``(sampled [S], true_expected_count [..., T],
      sampled_expected_count [S])``; if None,
      ``log_uniform_candidate_sampler(key, labels, T, S, True, num_classes)``.
    remove_accidental_hits: mask sampled classes equal to a target (TF's
      default here is False, unlike ``sampled_softmax_loss``).
    key: ``jax.random`` key; required when ``sampled_values`` is None.

  Returns:
    ``[...]`` per-example NCE losses (TF's ``[N]``). Out-of-range labels give
    NaN under ``jit`` (concrete ones raise ``ValueError``).

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> w, b = jnp.ones((50, 8)) * 0.1, jnp.zeros((50,))
    >>> x, y = jnp.ones((4, 8)), jnp.array([[1], [2], [3], [4]])
    >>> jbs.nce_loss(w, b, y, x, 10, 50, key=jax.random.key(0)).shape
    (4,)

  References:
    Gutmann & Hyvarinen 2010, "Noise-contrastive estimation"; Mnih & Teh 2012;
    Mikolov et al. 2013 (word2vec); TensorFlow ``nn_impl.nce_loss``.
  """
  return _nce_from_logits(*_sampled_logits(
      weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values, True,
      remove_accidental_hits, key))


def compute_accidental_hits(
    true_classes: ArrayLike,
    sampled_candidates: ArrayLike,
    num_true: int,
) -> jax.Array:
  r"""Which sampled candidates equal a target of their row (``tf.nn.compute_accidental_hits``).

  TensorFlow returns variable-length ``(indices, ids, weights)`` triplets; to
  keep shapes static we return the dense mask they describe::

    mask[..., s] = (sampled_candidates[s] in true_classes[..., :])
                   and s is the LAST position of that value in sampled_candidates

  (TF's bookkeeping: a candidate drawn several times, possible with
  ``unique=False``, is reported at its last occurrence only). For ``[N, T]``
  true classes, TF's triplets are ``indices, ids = jnp.nonzero(mask)`` (up to
  order, and TF repeats a pair once per duplicated target) with every weight
  ``-FLT_MAX``; ``jnp.where(mask, -FLT_MAX, 0)`` is the dense tensor TF adds to
  the sampled logits.

  Args:
    true_classes: ``[..., num_true]`` int target classes.
    sampled_candidates: ``[S]`` int sampled classes.
    num_true: T.

  Returns:
    ``[..., S]`` bool mask.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> jbs.compute_accidental_hits(jnp.array([[1, 1], [3, 4]]), jnp.array([1, 4, 1, 3]), 2)
    Array([[False, False,  True, False],
           [False,  True, False,  True]], dtype=bool)

  References:
    TensorFlow ``candidate_sampling_ops.compute_accidental_hits``.
  """
  _checks.check_count("num_true", num_true)
  _checks.check_integer("true_classes", true_classes)
  _checks.check_integer("sampled_candidates", sampled_candidates)
  _checks.check_ndim("true_classes", true_classes, min_ndim=1)
  _checks.check_ndim("sampled_candidates", sampled_candidates, ndim=1)
  _checks.check_shape("true_classes", true_classes,
                      tuple(jnp.shape(true_classes)[:-1]) + (num_true,), "[..., num_true]")
  return _hits_mask(jnp.asarray(true_classes), jnp.asarray(sampled_candidates))


class SampledRows(NamedTuple):
  """The rows of ``weights`` / ``biases`` that one sampled-softmax step touches.

  A pytree of float arrays (differentiate with respect to it): the rows of the
  ``T`` true classes of every example and of the ``S`` shared samples. Its
  gradient is the sparse equivalent of TensorFlow's ``IndexedSlices``.
  """

  true_weights: jax.Array  # [..., T, D]
  true_biases: jax.Array  # [..., T]
  sampled_weights: jax.Array  # [S, D]
  sampled_biases: jax.Array  # [S]


def _no_wrap(ids, vocab: int):
  """Every out-of-range id moved to ``vocab`` (just past the end), so it counts as out of range.

  Negative ids would otherwise wrap (numpy-style), and XLA's gather/scatter
  bounds handling looks at 32 bits of an int64 index on CPU (``2**32 + 1``
  acts as ``1``), so the range is decided here, at the ids' own width.
  """
  return jnp.where((ids >= 0) & (ids < vocab), ids, vocab)


def _take_rows(table, ids):
  """``table[ids]``; rows of out-of-range ids are NaN (never a plausible number).

  ``table`` may be a list of row shards: the rows of their concatenation are
  gathered from the shard that holds them, without concatenating.
  """
  shards = table if isinstance(table, (list, tuple)) else [table]
  vocab = _num_rows(shards)
  ids = _no_wrap(ids, vocab)
  if len(shards) == 1:
    return jnp.take(jnp.asarray(shards[0]), ids, axis=0, mode="fill", fill_value=jnp.nan)
  dtype = jnp.result_type(*shards)
  out, offset = None, 0
  for w in shards:
    w = jnp.asarray(w, dtype)
    rows = jnp.take(w, ids - offset, axis=0, mode="fill", fill_value=jnp.nan)
    if out is None:  # the first shard's fill (NaN) covers ids that no shard holds.
      out = rows
    else:
      mine = (ids >= offset) & (ids < offset + w.shape[0])
      out = jnp.where(mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim)), rows, out)
    offset += w.shape[0]
  return out


def _gather_rows(weights, biases, labels, sampled) -> SampledRows:
  if biases is None:
    w0 = weights[0] if isinstance(weights, (list, tuple)) else weights
    biases = jnp.zeros((_num_rows(weights if isinstance(weights, (list, tuple)) else [weights]),),
                       jnp.result_type(w0))
  return SampledRows(_take_rows(weights, labels), _take_rows(biases, labels),
                     _take_rows(weights, sampled), _take_rows(biases, sampled))


def _check_rows_args(weights, biases, labels, sampled, *, allow_shards=False) -> None:
  if not allow_shards and isinstance(weights, (list, tuple)):
    raise TypeError("weights must be one [V, D] array here (a list of shards is accepted by"
                    " gather_sampled_rows and the losses, not by the scatter).")
  vocab = _num_rows(_shards("weights", weights, 2))
  if biases is not None:
    if not allow_shards and isinstance(biases, (list, tuple)):
      raise TypeError("biases must be one [V] array here, not a list of shards.")
    b_rows = _num_rows(_shards("biases", biases, 1))
    if b_rows != vocab:
      raise ValueError(f"biases must have {vocab} entries in all (weights' rows [V]); got"
                       f" {b_rows}.")
  _checks.check_integer("labels", labels)
  _checks.check_ndim("labels", labels, min_ndim=1)
  _checks.check_integer("sampled", sampled)
  _checks.check_ndim("sampled", sampled, ndim=1)
  _checks.check_labels_in_range(labels, vocab, name="labels")
  _checks.check_labels_in_range(sampled, vocab, name="sampled")


def _check_rows_shapes(rows, labels_shape, num_sampled: int, dim: int) -> None:
  for name, want in (("true_weights", labels_shape + (dim,)), ("true_biases", labels_shape),
                     ("sampled_weights", (num_sampled, dim)), ("sampled_biases", (num_sampled,))):
    _checks.check_shape(f"rows.{name}", getattr(rows, name), want)


def gather_sampled_rows(
    weights: ArrayLike,
    biases: ArrayLike | None,
    labels: ArrayLike,
    sampled: ArrayLike,
) -> SampledRows:
  """Gathers the true and sampled rows of ``weights`` and ``biases``.

  With :func:`sampled_softmax_loss_from_rows` and
  :func:`scatter_add_sampled_rows` this is the sparse-gradient path of sampled
  softmax (TensorFlow's ``IndexedSlices``): differentiate the loss with respect
  to the gathered rows (``(N*T + S) x D`` numbers) instead of ``weights``
  (``V x D``, which ``jax.grad`` would return as a dense array of mostly zeros),
  then add the scaled row gradients back with a scatter.

  Args:
    weights: ``[V, D]`` class embeddings, or a list of row shards ``[V_p, D]``
      (TF's ``partition_strategy="div"`` layout: the rows of their
      concatenation, gathered without concatenating).
    biases: ``[V]`` class biases, a list of shards ``[V_p]``, or None (zero biases).
    labels: ``[..., T]`` int true classes.
    sampled: ``[S]`` int sampled classes (``sampled_values[0]`` of a sampler).

  Returns:
    :class:`SampledRows` ``(true_weights [..., T, D], true_biases [..., T],
    sampled_weights [S, D], sampled_biases [S])``. Rows of out-of-range ids are
    NaN under ``jit`` (concrete ids raise ``ValueError``).

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> w, b = jnp.ones((50, 8)) * 0.1, jnp.zeros((50,))
    >>> x, y = jnp.ones((4, 8)), jnp.array([[1], [2], [3], [4]])
    >>> sv = jbs.log_uniform_candidate_sampler(jax.random.key(0), y, 1, 10, True, 50)
    >>> rows = jbs.gather_sampled_rows(w, b, y, sv[0])
    >>> loss_fn = lambda r: jbs.sampled_softmax_loss_from_rows(r, y, x, sv).mean()
    >>> g = jax.grad(loss_fn)(rows)                     # row gradients only
    >>> w, b = jbs.scatter_add_sampled_rows(w, b, y, sv[0], jax.tree.map(lambda t: -0.1 * t, g))
    >>> w.shape, g.sampled_weights.shape
    ((50, 8), (10, 8))

  References:
    TensorFlow ``nn_impl._compute_sampled_logits`` (``embedding_lookup`` of
    the true and sampled rows, differentiated as ``IndexedSlices``).
  """
  _check_rows_args(weights, biases, labels, sampled, allow_shards=True)
  return _gather_rows(weights, biases, jnp.asarray(labels), jnp.asarray(sampled))


def scatter_add_sampled_rows(
    weights: ArrayLike,
    biases: ArrayLike | None,
    labels: ArrayLike,
    sampled: ArrayLike,
    rows: SampledRows,
) -> tuple[jax.Array, jax.Array | None]:
  """Adds ``rows`` into ``weights`` / ``biases`` at the true and sampled ids.

  The inverse of :func:`gather_sampled_rows` for updates: a class that occurs
  several times (in ``labels`` and/or ``sampled``) receives the sum of its row
  values, so scattering a row gradient gives exactly the dense gradient that
  ``jax.grad`` of :func:`sampled_softmax_loss` returns. Scattering ``-lr *``
  the row gradients is sparse SGD; under ``jit`` with ``weights`` donated the
  update is in place and costs O((N*T + S) * D), not O(V * D). Out-of-range
  ids are dropped (concrete ones raise ``ValueError``).

  Args:
    weights: ``[V, D]``.
    biases: ``[V]`` or None (then ``rows``' biases are ignored and None is
      returned).
    labels: ``[..., T]`` int, as given to :func:`gather_sampled_rows`.
    sampled: ``[S]`` int, as given to :func:`gather_sampled_rows`.
    rows: :class:`SampledRows` of matching shapes (e.g. a scaled gradient).

  Returns:
    ``(weights + scattered rows, biases + scattered biases or None)``.
  """
  _check_rows_args(weights, biases, labels, sampled)
  _check_rows_shapes(rows, tuple(jnp.shape(labels)), jnp.shape(sampled)[0], jnp.shape(weights)[1])
  w = jnp.asarray(weights)
  labels, sampled = (_no_wrap(jnp.asarray(i), w.shape[0]) for i in (labels, sampled))
  w = w.at[labels].add(rows.true_weights.astype(w.dtype), mode="drop")
  w = w.at[sampled].add(rows.sampled_weights.astype(w.dtype), mode="drop")
  if biases is None:
    return w, None
  b = jnp.asarray(biases)
  b = b.at[labels].add(rows.true_biases.astype(b.dtype), mode="drop")
  b = b.at[sampled].add(rows.sampled_biases.astype(b.dtype), mode="drop")
  return w, b


def _logits_from_rows(rows, labels, sampled, inputs, true_ec, sampled_ec, subtract_log_q,
                      remove_accidental_hits):
  """``(true [..., T], sampled [..., S])`` logits from gathered rows (validated arguments)."""
  lead, dim, num_true = inputs.shape[:-1], inputs.shape[-1], labels.shape[-1]
  true_logits, sampled_logits = _sampled_logits_from_rows(
      inputs.reshape(-1, dim), rows.true_weights.reshape(-1, num_true, dim),
      rows.true_biases.reshape(-1, num_true), rows.sampled_weights, rows.sampled_biases,
      labels.reshape(-1, num_true), sampled, true_ec.reshape(-1, num_true), sampled_ec,
      subtract_log_q, remove_accidental_hits)
  return true_logits.reshape(lead + (num_true,)), sampled_logits.reshape(lead + (-1,))


def _loss_from_rows(rows, labels, sampled, inputs, true_ec, sampled_ec, remove_accidental_hits):
  """Per-example TF sampled loss ``[...]`` from gathered rows (validated arguments)."""
  return _soft_label_ce(*_logits_from_rows(rows, labels, sampled, inputs, true_ec, sampled_ec,
                                           True, remove_accidental_hits))


def sampled_softmax_loss_from_rows(
    rows: SampledRows,
    labels: ArrayLike,
    inputs: ArrayLike,
    sampled_values: tuple[ArrayLike, ArrayLike, ArrayLike],
    remove_accidental_hits: bool = True,
) -> jax.Array:
  """:func:`sampled_softmax_loss` on rows from :func:`gather_sampled_rows`.

  Same numbers as ``sampled_softmax_loss(weights, biases, labels, inputs, S,
  V, T, sampled_values, remove_accidental_hits)`` when ``rows =
  gather_sampled_rows(weights, biases, labels, sampled_values[0])``;
  differentiating with respect to ``rows`` gives the row gradients (see
  :func:`gather_sampled_rows` for the sparse training step).

  Args:
    rows: :class:`SampledRows` for these ``labels`` and ``sampled_values[0]``.
    labels: ``[..., T]`` int true classes (used for accidental hits).
    inputs: ``[..., D]`` activations.
    sampled_values: ``(sampled [S], true_expected_count [..., T],
      sampled_expected_count [S])`` from a ``*_candidate_sampler``.
    remove_accidental_hits: mask sampled classes equal to one of the targets.

  Returns:
    ``[...]`` per-example losses (NaN where a gathered row is NaN, i.e. for an
    out-of-range id).
  """
  _checks.check_bool("remove_accidental_hits", remove_accidental_hits)
  _checks.check_floating("inputs", inputs)
  _checks.check_ndim("inputs", inputs, min_ndim=1)
  _checks.check_integer("labels", labels)
  lead, dim = tuple(jnp.shape(inputs)[:-1]), jnp.shape(inputs)[-1]
  _checks.check_ndim("labels", labels, ndim=len(lead) + 1)
  _checks.check_shape("labels", labels, lead + (None,), "[..., num_true] matching inputs")
  t = jnp.shape(labels)[-1]
  if not isinstance(rows, SampledRows):
    raise TypeError(f"rows must be a SampledRows (from gather_sampled_rows); got {type(rows).__name__}.")
  sampled, true_ec, sampled_ec = _unpack_sampled_values(sampled_values, lead + (t,))
  _check_rows_shapes(rows, lead + (t,), sampled.shape[0], dim)
  return _loss_from_rows(rows, jnp.asarray(labels), sampled, jnp.asarray(inputs), true_ec,
                         sampled_ec, remove_accidental_hits)


def _paddle_tolerable(v: jax.Array) -> jax.Array:
  """Paddle's TolerableValue: +-inf -> +-1e20."""
  return jnp.where(jnp.isposinf(v), _PADDLE_HIT, jnp.where(jnp.isneginf(v), -_PADDLE_HIT, v))


def sampled_softmax_with_cross_entropy(
    logits: ArrayLike,
    label: ArrayLike,
    num_samples: int,
    num_true: int = 1,
    remove_accidental_hits: bool = True,
    use_customized_samples: bool = False,
    customized_samples: ArrayLike | None = None,
    customized_probabilities: ArrayLike | None = None,
    seed: int = 0,
    *,
    key: jax.Array | None = None,
) -> jax.Array:
  r"""Sampled softmax cross-entropy on precomputed logits, Paddle semantics.

  Paddle's ``fluid.layers.sampled_softmax_with_cross_entropy`` (the
  ``sample_logits`` op followed by a soft-label softmax cross-entropy). Per row
  the candidates are ``samples = [label (T), negatives (S)]``; without
  customized samples the S negatives are drawn once per call with
  ``log_uniform_candidate_sampler(unique=True)`` and shared by every row, and
  ``probabilities`` are their expected counts::

    z_j  = logits[samples_j] - log(probabilities_j)   (+-inf clipped to +-1e20)
    z_j -= 1e20  for j >= T if samples_j is in samples[:T]   (accidental hit)
    loss = logsumexp_j(z_j) - (1/T) sum_{t<T} z_t

  With ``use_customized_samples`` the ``[..., T+S]`` samples and probabilities
  are used exactly as given (deterministic); as in Paddle's kernel, the
  targets are then the first T columns of ``customized_samples`` (``label`` only
  fixes T) and hits are tested against them.

  Difference from Paddle for ``num_true > 1``: Paddle builds the soft label
  with ``one_hot(sampled_label [N, T], depth=num_samples + 1)``, which for
  T > 1 has the wrong width and puts a single 1 per row at the wrong place
  (it does not give each target 1/T). We use the weight 1/T on each target
  that Paddle documents (and TensorFlow computes). For T = 1 the numbers are
  Paddle's (fixtures in ``tests/fixtures/sampled_paddle.npz``). Paddle's own
  sampler returns TF-style ``num_tries`` expected counts; ours are described in
  ``log_uniform_candidate_sampler``.

  Args:
    logits: ``[..., K]`` unscaled logits.
    label: ``[..., T]`` int target classes.
    num_samples: S, sampled negatives (``< K`` when sampling).
    num_true: T.
    remove_accidental_hits: subtract 1e20 from negatives equal to a target.
    use_customized_samples: use ``customized_samples``/``customized_probabilities``.
    customized_samples: ``[..., T+S]`` int class ids.
    customized_probabilities: ``[..., T+S]`` float ``Q`` of those ids.
    seed: sampler seed, used only when ``key`` is None (``jax.random.key(seed)``;
      unlike Paddle, seed 0 is a fixed seed, not a random one).
    key: ``jax.random`` key for the sampler.

  Returns:
    ``[..., 1]`` per-example losses.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> logits = jnp.arange(12.0).reshape(2, 6)
    >>> label = jnp.array([[1], [2]])
    >>> jbs.sampled_softmax_with_cross_entropy(logits, label, 3).shape
    (2, 1)

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation"; Paddle ``sample_logits_op.h``.
  """
  _checks.check_count("num_samples", num_samples)
  _checks.check_count("num_true", num_true)
  _checks.check_bool("remove_accidental_hits", remove_accidental_hits)
  _checks.check_bool("use_customized_samples", use_customized_samples)
  _checks.check_floating("logits", logits)
  _checks.check_integer("label", label)
  _checks.check_ndim("logits", logits, min_ndim=1)
  lead, num_classes = tuple(jnp.shape(logits)[:-1]), jnp.shape(logits)[-1]
  _checks.check_shape("label", label, lead + (num_true,), "[..., num_true]")
  width = num_true + num_samples
  if use_customized_samples:
    if customized_samples is None or customized_probabilities is None:
      raise ValueError("customized_samples and customized_probabilities are required when"
                       " use_customized_samples=True; got None.")
    _checks.check_integer("customized_samples", customized_samples)
    _checks.check_floating("customized_probabilities", customized_probabilities)
    _checks.check_shape("customized_samples", customized_samples, lead + (width,),
                        "[..., num_true + num_samples]")
    _checks.check_shape("customized_probabilities", customized_probabilities, lead + (width,),
                        "[..., num_true + num_samples]")
    _checks.check_labels_in_range(customized_samples, num_classes, name="customized_samples")
    samples = jnp.asarray(customized_samples)
    probs = jax.lax.stop_gradient(jnp.asarray(customized_probabilities))
  else:
    if num_samples >= num_classes:
      raise ValueError(
          f"num_samples must be < the number of classes logits.shape[-1] = {num_classes} for"
          f" unique sampling; got num_samples={num_samples}.")
    _checks.check_labels_in_range(label, num_classes, name="label")
    if key is None:
      _checks.check_count("seed", seed, 0)
      key = jax.random.key(seed)
    sampled, true_ec, sampled_ec = log_uniform_candidate_sampler(
        key, label, num_true, num_samples, True, num_classes)
    samples = jnp.concatenate(
        [jnp.asarray(label), jnp.broadcast_to(sampled, lead + (num_samples,))], axis=-1)
    probs = jnp.concatenate([true_ec, jnp.broadcast_to(sampled_ec, lead + (num_samples,))],
                            axis=-1)

  acc = _checks.compute_dtype(logits)
  bad = jnp.any((samples < 0) | (samples >= num_classes), axis=-1, keepdims=True)
  z = jnp.take_along_axis(jnp.asarray(logits), jnp.clip(samples, 0, num_classes - 1),
                          axis=-1).astype(acc)
  if remove_accidental_hits:
    targets, negs = samples[..., :num_true], samples[..., num_true:]
    hit = jnp.zeros(negs.shape, bool)
    for t in range(num_true):
      hit |= negs == targets[..., t:t + 1]
    z = jnp.concatenate([z[..., :num_true], jnp.where(hit, z[..., num_true:] - _PADDLE_HIT,
                                                      z[..., num_true:])], axis=-1)
  z = _paddle_tolerable(z - _paddle_tolerable(jnp.log(probs.astype(acc))))
  loss = _soft_label_ce(z[..., :num_true], z[..., num_true:])[..., None]
  return jnp.where(bad, jnp.nan, loss)
