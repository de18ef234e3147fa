"""Exact losses with torch semantics: ``nll_loss`` and ``cross_entropy``.

The class axis is the LAST axis (torch's is axis 1): ``cross_entropy(x, y)``
here equals ``torch.nn.functional.cross_entropy(moveaxis(x, -1, 1), y)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks
from jax_bigsoftmax._core.linear import label_terms


def _check_common(name, scores, labels, weight, reduction):
  _checks.check_floating(name, scores)
  _checks.check_ndim(name, scores, min_ndim=1)
  _checks.check_integer("labels", labels)
  _checks.check_batch_match(name, jnp.shape(scores), "labels", jnp.shape(labels))
  _checks.check_reduction(reduction)
  num_classes = jnp.shape(scores)[-1]
  if weight is not None:
    _checks.check_floating("weight", weight)
    _checks.check_shape("weight", weight, (num_classes,), "one weight per class")
  return num_classes


def reduce_loss(per_position: jax.Array, w_label: jax.Array, bad: jax.Array,
                reduction: str) -> jax.Array:
  """torch's reductions: 'mean' divides by the summed weights of kept labels."""
  per_position = jnp.where(bad, jnp.nan, per_position)
  if reduction == "none":
    return per_position
  total = jnp.sum(per_position)
  if reduction == "sum":
    return total
  denom = jnp.sum(w_label)
  # Nothing kept: NaN like torch, with zero (not NaN) gradients.
  safe_denom = jnp.where(denom == 0, jnp.ones((), denom.dtype), denom)
  return jnp.where(denom == 0, jnp.nan, total / safe_denom)


def nll_loss(
    log_probs: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> jax.Array:
  r"""Negative log-likelihood of integer labels, torch semantics, class axis last.

  ``loss[i] = -weight[y_i] * log_probs[i, y_i]`` (0 where ``y_i == ignore_index``);
  ``"mean"`` divides the sum by ``sum_i weight[y_i]`` over kept positions
  (NaN when every position is ignored, as in torch).

  Args:
    log_probs: ``[..., C]`` log-probabilities (any leading dims).
    labels: ``[...]`` integer class ids in ``[0, C)`` or ``ignore_index``.
    weight: optional ``[C]`` class weights.
    ignore_index: label value that contributes 0 and is excluded from the mean.
    reduction: ``"mean" | "sum" | "none"``.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``; float32 for half inputs.
    An out-of-range label (not ``ignore_index``) raises ``ValueError`` when the
    labels are concrete, and yields NaN under ``jit`` (wrap the function in
    :func:`jax_bigsoftmax.checked` to raise instead).

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> lp = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    >>> round(float(jbs.nll_loss(lp, jnp.array([0]))), 4)
    0.6931

  References:
    torch.nn.functional.nll_loss.
  """
  num_classes = _check_common("log_probs", log_probs, labels, weight, reduction)
  _checks.check_labels_in_range(labels, num_classes, name="labels", ignore_index=ignore_index)
  labels = jnp.asarray(labels)
  dtype = _checks.compute_dtype(log_probs)
  log_probs = jnp.asarray(log_probs, dtype)
  safe, w_label, bad = label_terms(labels, num_classes, weight, ignore_index, dtype)
  picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  # A select, not a product: NaN/inf at ignored positions stays out (and so do its grads).
  loss = jnp.where(labels == ignore_index, jnp.zeros((), dtype), -w_label * picked)
  return reduce_loss(loss, w_label, bad, reduction)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Softmax cross-entropy of integer labels, torch semantics, class axis last.

  With ``lse = logsumexp(z)``, ``eps = label_smoothing`` and class weights ``w``
  (all ones when ``weight`` is None), each kept position costs

  .. math::
    (1-\epsilon)\, w_y (\mathrm{lse} - z_y)
    + \frac{\epsilon}{C} \sum_c w_c (\mathrm{lse} - z_c)

  and ``"mean"`` divides the sum by ``sum w_y`` over kept positions (torch's
  normalisation, also for the smoothing term). The label log-probability is
  gathered; ``log_softmax`` is never materialised.

  Args:
    logits: ``[..., C]`` unnormalised scores.
    labels: ``[...]`` integer class ids in ``[0, C)`` or ``ignore_index``; or
      float class probabilities ``[..., C]`` (torch's probability targets:
      ``loss = -sum_c w_c t_c log_softmax(z)_c`` with smoothed
      ``t = (1 - eps) t + eps / C``; ``"mean"`` divides by the number of
      positions, not by the weights; ``ignore_index`` does not apply).
    weight: optional ``[C]`` class weights.
    ignore_index: label value that contributes 0 and is excluded from the mean;
      its positions are masked, so NaN or inf logits there are harmless.
    reduction: ``"mean" | "sum" | "none"``.
    label_smoothing: ``eps`` in ``[0, 1]``.

  Returns:
    A scalar, or ``[...]`` for ``reduction="none"``; float32 for half inputs.
    Out-of-range labels: as :func:`nll_loss`.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> round(float(jbs.cross_entropy(jnp.zeros((2, 4)), jnp.array([1, 3]))), 4)
    1.3863

  References:
    torch.nn.functional.cross_entropy; Szegedy et al. 2016 (label smoothing).
  """
  if _is_prob_target(logits, labels):
    return _cross_entropy_prob(logits, labels, weight, reduction, label_smoothing)
  num_classes = _check_common("logits", logits, labels, weight, reduction)
  _checks.check_label_smoothing(label_smoothing)
  _checks.check_labels_in_range(labels, num_classes, name="labels", ignore_index=ignore_index)
  labels = jnp.asarray(labels)
  dtype = _checks.compute_dtype(logits)
  logits = jnp.asarray(logits, dtype)
  safe, w_label, bad = label_terms(labels, num_classes, weight, ignore_index, dtype)
  ignored = labels == ignore_index
  # Ignored positions are masked before any arithmetic (a NaN or inf row of
  # padding must not leak into the loss or the gradients), as torch does.
  logits = jnp.where(ignored[..., None], jnp.zeros((), dtype), logits)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  loss = w_label * (lse - picked)
  if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0):
    eps = jnp.asarray(label_smoothing, dtype)
    if weight is None:
      smooth = num_classes * lse - jnp.sum(logits, axis=-1)
    else:
      w = jnp.asarray(weight, dtype)
      smooth = jnp.sum(w) * lse - logits @ w
    loss = (1 - eps) * loss + (eps / num_classes) * smooth
  loss = jnp.where(ignored, jnp.zeros((), dtype), loss)
  return reduce_loss(loss, w_label, bad, reduction)


def _is_prob_target(logits, targets) -> bool:
  dtype = jnp.result_type(targets)
  return jnp.issubdtype(dtype, jnp.floating)


def _cross_entropy_prob(logits, targets, weight, reduction, label_smoothing):
  """torch's class-probability-target cross-entropy (``prob_target`` path)."""
  _checks.check_floating("logits", logits)
  _checks.check_ndim("logits", logits, min_ndim=1)
  _checks.check_reduction(reduction)
  _checks.check_label_smoothing(label_smoothing)
  shape = tuple(jnp.shape(logits))
  if tuple(jnp.shape(targets)) == shape[:-1]:
    raise TypeError(
        f"labels must be an integer array (or float class probabilities of shape {shape});"
        f" got dtype {jnp.result_type(targets)} with shape {shape[:-1]}.")
  if tuple(jnp.shape(targets)) != shape:
    raise ValueError(
        f"targets of float dtype are class probabilities and must have the shape of logits"
        f" {shape}; got {tuple(jnp.shape(targets))} (integer labels have shape {shape[:-1]}).")
  num_classes = shape[-1]
  if weight is not None:
    _checks.check_floating("weight", weight)
    _checks.check_shape("weight", weight, (num_classes,), "one weight per class")
  dtype = _checks.compute_dtype(logits, targets)
  logits = jnp.asarray(logits, dtype)
  targets = jnp.asarray(targets, dtype)
  if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0):
    eps = jnp.asarray(label_smoothing, dtype)
    targets = targets * (1 - eps) + eps / num_classes
  terms = jax.nn.log_softmax(logits, axis=-1) * targets
  if weight is not None:
    terms = terms * jnp.asarray(weight, dtype).reshape((1,) * (terms.ndim - 1) + (-1,))
  loss = -jnp.sum(terms, axis=-1)
  if reduction == "none":
    return loss
  if reduction == "sum":
    return jnp.sum(loss)
  # torch divides by the number of positions (weights do not enter the mean here).
  return jnp.sum(loss) / loss.size if loss.size else jnp.full((), jnp.nan, dtype)
