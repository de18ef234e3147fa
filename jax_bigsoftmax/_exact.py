"""Exact losses with torch semantics: ``nll_loss`` and ``cross_entropy``.

The class axis is the LAST axis (torch's is axis 1): ``cross_entropy(x, y)``
here equals ``torch.nn.functional.cross_entropy(moveaxis(x, -1, 1), y)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks


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


def label_terms(labels: jax.Array, num_classes: int, weight: jax.Array | None,
                ignore_index: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-position bookkeeping shared by every exact loss.

  Returns ``(safe_labels, w_label, bad)``: labels clipped into range (for
  gathers), the class weight of each label (0 where ignored) and a mask of
  out-of-range, non-ignored labels (the caller turns those into NaN).
  """
  ignored = labels == ignore_index
  in_range = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(in_range, labels, 0)
  if weight is None:
    w_label = jnp.ones(labels.shape, dtype)
  else:
    w_label = jnp.asarray(weight, dtype)[safe]
  w_label = jnp.where(ignored, jnp.zeros((), dtype), w_label)
  bad = ~(in_range | ignored)
  return safe, w_label, bad


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
  return reduce_loss(-w_label * picked, w_label, bad, reduction)


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
    labels: ``[...]`` integer class ids in ``[0, C)`` or ``ignore_index``.
    weight: optional ``[C]`` class weights.
    ignore_index: label value that contributes 0 and is excluded from the mean.
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
  num_classes = _check_common("logits", logits, labels, weight, reduction)
  _checks.check_label_smoothing(label_smoothing)
  _checks.check_labels_in_range(labels, num_classes, name="labels", ignore_index=ignore_index)
  labels = jnp.asarray(labels)
  dtype = _checks.compute_dtype(logits)
  logits = jnp.asarray(logits, dtype)
  safe, w_label, bad = label_terms(labels, num_classes, weight, ignore_index, dtype)
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
    smooth = jnp.where(labels == ignore_index, jnp.zeros((), dtype), smooth)
    loss = (1 - eps) * loss + (eps / num_classes) * smooth
  return reduce_loss(loss, w_label, bad, reduction)
