"""Host-side helpers for adaptive softmax: frequency sort and cutoff choice.

Adaptive softmax needs class ids sorted by frequency (0 = most frequent) and a
choice of cutoffs; torch leaves both to the user. These run on NumPy (data
preprocessing), not under ``jit``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jax_bigsoftmax._core import checks as _checks


def _check_counts(counts) -> np.ndarray:
  c = np.asarray(counts)
  if c.ndim != 1 or c.size == 0:
    raise ValueError(f"counts must be a non-empty 1-D array; got shape {c.shape}.")
  if not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
    raise TypeError(f"counts must be numeric; got dtype {c.dtype}.")
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError("counts must be finite and non-negative.")
  return c.astype(np.float64)


def frequency_sort(counts: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Renumbers classes by decreasing frequency (ties keep id order).

  Args:
    counts: ``[V]`` occurrence count (or frequency) of each class id.

  Returns:
    ``(old_to_new, new_to_old)``, two ``[V]`` int arrays: relabel data with
    ``new_labels = old_to_new[labels]``, map predictions back with
    ``new_to_old[pred]``. ``counts[new_to_old]`` is non-increasing.

  Examples:
    >>> import jax_bigsoftmax as jbs
    >>> old_to_new, new_to_old = jbs.frequency_sort([3, 10, 0, 10])
    >>> old_to_new.tolist(), new_to_old.tolist()
    ([2, 0, 3, 1], [1, 3, 0, 2])
  """
  c = _check_counts(counts)
  new_to_old = np.argsort(-c, kind="stable")
  old_to_new = np.empty_like(new_to_old)
  old_to_new[new_to_old] = np.arange(c.size)
  return old_to_new, new_to_old


def _matmul_cost(rows, k, m, overhead, min_work):
  """Grave et al.'s g: constant below an inflection point, then linear."""
  return overhead + np.maximum(min_work, rows * k * m)


def adaptive_cost(
    counts, cutoffs: Sequence[int], *, in_features: int = 512,
    div_value: float = 4.0, batch_size: int = 4096,
    matmul_overhead: float = 2.0**20, min_work: float = 0.0,
) -> float:
  """Modelled cost (multiply-adds) of one batch for frequency-sorted ``counts``.

  ``g(rows, k, m) = overhead + max(min_work, rows * k * m)`` for a ``[rows, k]
  x [k, m]`` product (Grave et al. 2016, Sec. 3); the head costs ``g(B, D,
  c0 + J)``, tail ``i`` costs ``g(p_i B, D, hsz_i) + g(p_i B, hsz_i, osz_i)``
  with ``p_i`` its share of the counts. ``cutoffs`` in torch's form.
  """
  c = _check_counts(counts)
  div_value = _checks.check_div_value(div_value)
  in_features = _checks.check_positive_int("in_features", in_features)
  bounds = [int(v) for v in cutoffs] + [c.size]
  cum = np.concatenate([[0.0], np.cumsum(c)])
  total = cum[-1] if cum[-1] > 0 else 1.0
  cost = _matmul_cost(batch_size, in_features, bounds[0] + len(cutoffs),
                      matmul_overhead, min_work)
  for i in range(len(cutoffs)):
    rows = batch_size * (cum[bounds[i + 1]] - cum[bounds[i]]) / total
    hsz = int(in_features // div_value ** (i + 1))
    cost += _matmul_cost(rows, in_features, hsz, matmul_overhead, min_work)
    cost += _matmul_cost(rows, hsz, bounds[i + 1] - bounds[i], matmul_overhead, min_work)
  return float(cost)


def suggest_cutoffs(
    counts: Sequence[float] | np.ndarray,
    *,
    in_features: int = 512,
    div_value: float = 4.0,
    n_clusters: int | None = None,
    batch_size: int = 4096,
    matmul_overhead: float = 2.0**20,
    min_work: float = 0.0,
    n_candidates: int = 96,
) -> list[int]:
  """Cutoffs minimising the adaptive-softmax cost model of Grave et al.

  For frequency-sorted ``counts`` (see :func:`frequency_sort`), picks the
  boundaries ``c0 < c1 < ... < c_{J-1}`` (torch's ``cutoffs`` argument) that
  minimise :func:`adaptive_cost`: the expected multiply-adds of one batch of
  ``batch_size`` tokens, where cluster ``i`` is visited by its share ``p_i``
  of the tokens, plus ``matmul_overhead`` per matrix product (the paper's
  constant term ``c``; ``min_work`` is its inflection point ``k0 B0``, 0 on
  CPU). Boundaries are searched exactly by dynamic programming over a
  geometric grid of ``n_candidates`` values.

  Args:
    counts: ``[V]`` class counts, sorted so that id 0 is the most frequent.
    in_features: D, the input size of the head.
    div_value: the head's ``div_value`` (tail ``i`` has ``D // div**(i+1)``
      hidden units; clusters where this is 0 are not allowed).
    n_clusters: number of tail clusters J; None tries 1..4 and keeps the
      cheapest.
    batch_size: tokens per batch B in the model.
    matmul_overhead: fixed cost per matrix product, in multiply-adds.
    min_work: work below which a product costs the same (GPU inflection).
    n_candidates: size of the candidate grid for the boundaries.

  Returns:
    ``list[int]`` of J cutoffs, valid for ``AdaptiveLogSoftmaxWithLoss``.

  Examples:
    >>> import numpy as np, jax_bigsoftmax as jbs
    >>> zipf = 1.0 / np.arange(1, 100_001)
    >>> cut = jbs.suggest_cutoffs(zipf, in_features=512, n_clusters=2)
    >>> len(cut), 0 < cut[0] < cut[1] < 100_000
    (2, True)

  References:
    Grave et al., "Efficient softmax approximation for GPUs", 2016, Sec. 3-4.
  """
  c = _check_counts(counts)
  div_value = _checks.check_div_value(div_value)
  in_features = _checks.check_positive_int("in_features", in_features)
  v = c.size
  if v < 2:
    raise ValueError(f"counts must cover at least 2 classes; got {v}.")
  max_j = 0
  while max_j + 1 < v and int(in_features // div_value ** (max_j + 1)) >= 1:
    max_j += 1
  if max_j == 0:
    raise ValueError(
        f"in_features={in_features} // div_value={div_value} is 0: no tail"
        " cluster can have a hidden unit."
    )
  if n_clusters is None:
    choices = range(1, min(4, max_j) + 1)
  else:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= max_j:
      raise ValueError(
          f"n_clusters must be an int in [1, {max_j}] (hidden size >= 1 and"
          f" fewer clusters than classes); got {n_clusters!r}."
      )
    choices = [n_clusters]
  grid = np.unique(np.round(np.geomspace(1, v - 1, n_candidates)).astype(int))
  cum = np.concatenate([[0.0], np.cumsum(c)])
  total = cum[-1] if cum[-1] > 0 else 1.0
  kw = dict(overhead=matmul_overhead, min_work=min_work)

  best_cost, best_cut = np.inf, None
  for j in choices:
    if len(grid) < j:
      continue
    # cost[g]: cheapest head + clusters so far with the last boundary grid[g].
    cost = _matmul_cost(batch_size, in_features, grid + j, **kw).astype(float)
    back = []
    for i in range(j):
      hsz = int(in_features // div_value ** (i + 1))
      lo = grid[:, None]
      hi = np.append(grid, v)[None, :] if i == j - 1 else grid[None, :]
      rows = batch_size * (cum[hi] - cum[lo]) / total
      step = (_matmul_cost(rows, in_features, hsz, **kw)
              + _matmul_cost(rows, hsz, hi - lo, **kw))
      step = np.where(hi > lo, step, np.inf)
      if i == j - 1:
        step = step[:, -1:]  # the last cluster ends at V
      tot = cost[:, None] + step
      back.append(np.argmin(tot, axis=0))
      cost = np.min(tot, axis=0)
    if cost[-1] < best_cost:
      g = back[-1][-1]
      cut = [int(grid[g])]
      for i in range(j - 2, -1, -1):
        g = back[i][g]
        cut.append(int(grid[g]))
      best_cost, best_cut = cost[-1], cut[::-1]
  if best_cut is None:
    raise ValueError(f"no valid cutoffs for {v} classes.")
  return best_cut
