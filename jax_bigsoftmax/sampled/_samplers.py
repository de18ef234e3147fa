"""Candidate samplers for sampled softmax (``tf.random.*_candidate_sampler`` semantics).

Each sampler draws ``num_sampled`` classes from ``[0, range_max)`` once per
call (shared by the whole batch) and returns ``(sampled [S], true_expected_count
[..., T], sampled_expected_count [S])``, the ``Q(y|x)`` of Jean et al. 2014.

* ``unique=False``: S independent draws from ``P``; a class is expected
  ``S * P(k)`` times (exact; TensorFlow's formula).
* ``unique=True``: S *distinct* classes, distributed exactly like TensorFlow's
  rejection loop (draw from ``P`` with replacement, drop repeats, stop at S
  distinct), i.e. successive sampling without replacement in proportion to
  ``P``. We draw them in one shot with the Gumbel-top-k trick (Vieira 2014;
  Kool et al. 2019): the S largest ``log P(k) + Gumbel`` keys, in decreasing
  order, are exactly the classes of that loop in the order it finds them. The
  shape is static, so it works under ``jit``.

Expected counts with ``unique=True``. The probability that class k is among the
S distinct classes, ``pi_k``, has no closed form. TensorFlow
(``range_sampler.cc``, ``ExpectedCountHelper``) returns
``1 - (1 - P(k))**num_tries`` with the number of draws its loop happened to
make: a random, per-call value that does not keep ``sum_k pi_k = S``. We return
the order-sampling (Poisson threshold) approximation ``pi_k = 1 - exp(-P(k) t)``
with the one ``t`` that solves ``sum_k pi_k = S`` (Rosen 1997, "Asymptotic
theory for order sampling"). It is deterministic, sums to S exactly, is exact
for the uniform sampler (``S / V``), and matches the empirical inclusion
frequencies closely (``tests/sampled/test_sampled_samplers.py`` checks log-uniform
V=100/S=20 and V=60/S=45, and a Zipf unigram V=150/S=25, within 4 standard
errors + 0.008). Its error grows when a few classes hold most of the mass and
S is close to their number (max |error| about 0.01-0.03 for a handful of
classes and S of a few; TF's form ``1 - (1 - P)**n`` errs more there). ``t`` depends
only on (P, S): it is solved once in NumPy at trace time and cached.

Ranges beyond int32 (TensorFlow's samplers take an int64 ``range_max``).
``range_max`` up to ``2**31 - 1`` gives int32 ids. A larger ``range_max``
needs 64-bit integers: with ``jax_enable_x64`` on (or inside
``jax.enable_x64(True)``) the ids are int64; without it the sampler raises a
``ValueError`` saying so (never an overflowed id). For ranges above
``2**20`` the log-uniform and uniform samplers never build a per-class array:
``unique=False`` draws by inverse CDF, and ``unique=True`` runs TensorFlow's
rejection loop itself with static shapes (a ``while_loop`` drawing batches of
candidates with replacement and keeping the first S distinct ones, in order;
each batch is sized from ``t`` so one batch almost always suffices), so its
cost is O(S log S), independent of ``range_max``. Its ``t`` is computed from
the first ``2**20`` classes exactly plus an integral for the smooth tail.

True classes. ``true_classes`` must lie in ``[0, range_max)``: concrete ones
outside raise ``ValueError``; under ``jit`` their ``true_expected_count`` is
NaN (and under :func:`jax_bigsoftmax.checked` they raise), never a clamped
plausible count.
"""
from __future__ import annotations

import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks


# ----------------------------------------------------------------------------
# Inclusion rate t: sum_k -expm1(-p_k t) = S (float64, NumPy, trace time).


def _solve_rate(p: np.ndarray, num_sampled: int) -> float:
  """The t > 0 with ``sum(1 - exp(-p t)) == num_sampled`` (inf if S >= support)."""
  p = p[p > 0]
  if num_sampled >= p.size:
    return math.inf
  return _solve_rate_fn(lambda t: float(np.sum(-np.expm1(-p * t))), num_sampled)


def _solve_rate_fn(inclusion_sum, num_sampled: int) -> float:
  """The t with ``inclusion_sum(t) == num_sampled`` (increasing, concave; brentq)."""
  import scipy.optimize  # pylint: disable=import-outside-toplevel

  s = float(num_sampled)
  lo, hi = s, 2.0 * s  # sum(1 - exp(-p t)) <= t, so the root is >= S.
  while inclusion_sum(hi) < s:
    lo, hi = hi, 2.0 * hi
  return float(scipy.optimize.brentq(lambda t: inclusion_sum(t) - s, lo, hi, xtol=1e-12 * hi,
                                     rtol=1e-13, maxiter=200))


# Above this range the samplers build no per-class array (module docstring).
_HUGE_RANGE = 2**20
_INT32_MAX = 2**31 - 1


def _log_uniform_inclusion_sum(t: float, range_max: int) -> float:
  """``sum_{k < range_max} 1 - exp(-t P(k))`` without a ``[range_max]`` array.

  The first ``_HUGE_RANGE`` terms are summed exactly; the rest (where ``t P(k)``
  is smooth and tiny in k) by the midpoint rule as an integral over
  ``[K - 1/2, range_max - 1/2]``, Simpson on a log grid.
  """
  log_range = math.log1p(range_max)
  head = min(range_max, _HUGE_RANGE)
  k = np.arange(head, dtype=np.float64)
  total = float(np.sum(-np.expm1(-t * np.log1p(1.0 / (k + 1.0)) / log_range)))
  if range_max > head:
    u = np.linspace(math.log(head - 0.5), math.log(range_max - 0.5), 4001)
    x = np.exp(u)
    f = -np.expm1(-t * np.log1p(1.0 / (x + 1.0)) / log_range) * x
    h = u[1] - u[0]
    total += float(h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum()))
  return total


@functools.lru_cache(maxsize=64)
def _log_uniform_rate(range_max: int, num_sampled: int) -> float:
  if range_max <= _HUGE_RANGE:
    return _solve_rate(_log_uniform_probs_np(range_max), num_sampled)
  return _solve_rate_fn(lambda t: _log_uniform_inclusion_sum(t, range_max), num_sampled)


_unigram_rate_cache: dict[tuple[str, int], float] = {}


def _unigram_rate(p: np.ndarray, num_sampled: int) -> float:
  k = (hashlib.sha1(p.tobytes()).hexdigest(), num_sampled)
  if k not in _unigram_rate_cache:
    if len(_unigram_rate_cache) > 64:
      _unigram_rate_cache.clear()
    _unigram_rate_cache[k] = _solve_rate(p, num_sampled)
  return _unigram_rate_cache[k]


def _log_uniform_probs_np(range_max: int) -> np.ndarray:
  k = np.arange(range_max, dtype=np.float64)
  return np.log1p(1.0 / (k + 1.0)) / math.log1p(range_max)


# ----------------------------------------------------------------------------
# Shared machinery.


def _id_dtype(range_max: int):
  """int32 ids up to 2**31 - 1; int64 beyond (needs x64), else a clear error."""
  if range_max <= _INT32_MAX:
    return jnp.int32
  if jax.dtypes.canonicalize_dtype(jnp.int64) != jnp.int64:
    raise ValueError(
        f"range_max={range_max} exceeds the int32 range (2**31 - 1): its class ids need"
        " 64-bit integers. Enable them with jax.config.update('jax_enable_x64', True), the"
        " JAX_ENABLE_X64=1 environment variable or the jax.enable_x64(True) context; got"
        " range_max > 2**31 - 1 with x64 disabled.")
  return jnp.int64


def _check_common(key, true_classes, num_true, num_sampled, unique, range_max, *,
                  needs_key=True):
  if needs_key and key is None:
    raise ValueError("key must be a jax.random key (jax.random.key(seed)); got None.")
  for name, v, lo in (("num_true", num_true, 1), ("num_sampled", num_sampled, 1),
                      ("range_max", range_max, 1)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name} must be an int >= {lo}; got {v!r}.")
  if not isinstance(unique, (bool, np.bool_)):
    raise TypeError(f"unique must be a Python bool; got {unique!r}.")
  _checks.check_integer("true_classes", true_classes)
  _checks.check_ndim("true_classes", true_classes, min_ndim=1)
  shape = jnp.shape(true_classes)
  if shape[-1] != num_true:
    raise ValueError(
        f"true_classes must have shape [..., num_true] = [..., {num_true}]; got {shape}.")
  if unique and num_sampled > range_max:
    raise ValueError(
        f"num_sampled must be <= range_max when unique=True; got num_sampled={num_sampled},"
        f" range_max={range_max}.")
  id_dtype = _id_dtype(int(range_max))
  _checks.check_labels_in_range(true_classes, int(range_max), name="true_classes")
  return id_dtype


def _expected_count(p: jax.Array, rate: float, num_sampled: int, unique: bool) -> jax.Array:
  """E[# times a class of probability p appears in the S samples]."""
  p = p.astype(jnp.float32)
  if not unique:
    return p * num_sampled
  if math.isinf(rate):  # every class with p > 0 is always sampled.
    return jnp.where(p > 0, 1.0, 0.0).astype(jnp.float32)
  return -jnp.expm1(-p * rate)


def _unique_top_k(key, log_p: jax.Array, num_sampled: int) -> jax.Array:
  """S distinct classes ~ successive sampling without replacement (Gumbel-top-k)."""
  keys = log_p + jax.random.gumbel(key, log_p.shape, log_p.dtype)
  return jax.lax.top_k(keys, num_sampled)[1].astype(jnp.int32)


def _unique_by_rejection(key, draw, num_sampled: int, batch: int, id_dtype) -> jax.Array:
  """TensorFlow's rejection loop with static shapes: the first S distinct iid draws, in order.

  ``draw(key, n)`` returns ``n`` iid class ids. Each step draws ``batch`` ids,
  appends those not seen before (first occurrences, in draw order) to the
  ``[S]`` buffer, and stops once it holds S. The cost per step is
  O((S + batch) log(S + batch)) whatever the range of the ids.
  """
  s_, width = num_sampled, num_sampled + batch
  pos = jnp.arange(width)

  def body(state):
    key, found, count = state
    key, sub = jax.random.split(key)
    cand = draw(sub, batch).astype(id_dtype)
    vals = jnp.concatenate([found, cand])
    valid = jnp.concatenate([jnp.arange(s_) < count, jnp.ones((batch,), bool)])
    # Group equal values (invalid slots apart); the first valid entry of a group is kept.
    sort_key = jnp.where(valid, vals, jnp.iinfo(id_dtype).max)
    order = jnp.lexsort((pos, sort_key))
    sv, svalid = sort_key[order], valid[order]
    first = jnp.concatenate([jnp.ones((1,), bool), sv[1:] != sv[:-1]]) & svalid
    keep = jnp.zeros((width,), bool).at[order].set(first)
    take = jnp.argsort(jnp.where(keep, pos, width), stable=True)[:s_]
    count = jnp.minimum(jnp.sum(keep, dtype=jnp.int32), s_)
    found = jnp.where(jnp.arange(s_) < count, vals[take], 0).astype(id_dtype)
    return key, found, count

  state = (key, jnp.zeros((s_,), id_dtype), jnp.zeros((), jnp.int32))
  _, found, _ = jax.lax.while_loop(lambda st: st[2] < s_, body, state)
  return found


def _rejection_batch(rate: float, num_sampled: int) -> int:
  """Draws per rejection step: about the expected number of draws for S distinct (~ t)."""
  return int(min(max(1.1 * rate + 16, 2 * num_sampled), 64 * num_sampled + 1024))


def _sampler_out(sampled, p_of, true_classes, rate, num_sampled, unique, range_max):
  # TF marks the outputs as non-differentiable; they carry no gradient here either.
  true_classes = jnp.asarray(true_classes)
  top = min(range_max - 1, int(jnp.iinfo(true_classes.dtype).max))
  bad = (true_classes < 0) | (true_classes > top)
  tc = jnp.clip(true_classes, 0, top)
  true_ec = jnp.where(bad, jnp.nan, _expected_count(p_of(tc), rate, num_sampled, unique))
  sampled_ec = _expected_count(p_of(sampled), rate, num_sampled, unique)
  return (jax.lax.stop_gradient(sampled), jax.lax.stop_gradient(true_ec),
          jax.lax.stop_gradient(sampled_ec))


# ----------------------------------------------------------------------------
# Public samplers.


def log_uniform_candidate_sampler(
    key: jax.Array,
    true_classes: ArrayLike,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Samples classes from the log-uniform (Zipfian) distribution.

  ``P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1)`` for
  ``k in [0, range_max)`` (classes sorted by decreasing frequency), as
  ``tf.random.log_uniform_candidate_sampler``. See the module docstring for how
  ``unique=True`` samples and what its expected counts are.

  Args:
    key: a ``jax.random`` key.
    true_classes: ``[..., num_true]`` int, the target classes (only used for
      ``true_expected_count``; they are not excluded from the samples).
    num_true: number of targets per example T.
    num_sampled: number of classes to sample S.
    unique: sample S distinct classes (requires ``S <= range_max``).
    range_max: number of classes V.

  Returns:
    ``(sampled_candidates [S] int32 (int64 when range_max > 2**31 - 1),
    true_expected_count [..., T] float32, sampled_expected_count [S] float32)``.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> s, tq, sq = jbs.log_uniform_candidate_sampler(
    ...     jax.random.key(0), jnp.array([[0], [5]]), 1, 4, True, 100)
    >>> s.shape, tq.shape, sq.shape, len(set(s.tolist()))
    ((4,), (2, 1), (4,), 4)

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation"; TensorFlow ``range_sampler.cc`` (``LogUniformSampler``).
  """
  id_dtype = _check_common(key, true_classes, num_true, num_sampled, unique, range_max)
  log_range = math.log1p(range_max)
  # Ids beyond int32 need float64 draws to reach every id (TF draws in double).
  fdtype = jnp.float64 if id_dtype == jnp.int64 else jnp.float32

  def p_of(k):
    return jnp.log1p(1.0 / (k.astype(jnp.float32) + 1.0)) / log_range

  def draw(key, n):  # TF's inverse CDF: floor(exp(u * log(V + 1))) - 1.
    u = jax.random.uniform(key, (n,), fdtype)
    ids = jnp.floor(jnp.exp(u * log_range)).astype(id_dtype) - 1
    return jnp.clip(ids, 0, range_max - 1)

  if unique:
    rate = _log_uniform_rate(range_max, num_sampled)
    if range_max > _HUGE_RANGE:
      sampled = _unique_by_rejection(key, draw, num_sampled,
                                     _rejection_batch(rate, num_sampled), id_dtype)
    else:
      classes = jnp.arange(range_max, dtype=jnp.float32)
      sampled = _unique_top_k(key, jnp.log(jnp.log1p(1.0 / (classes + 1.0))), num_sampled)
  else:
    sampled = draw(key, num_sampled)
    rate = 0.0
  return _sampler_out(sampled, p_of, true_classes, rate, num_sampled, unique, range_max)


def uniform_candidate_sampler(
    key: jax.Array,
    true_classes: ArrayLike,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Samples classes uniformly from ``[0, range_max)`` (``tf.random.uniform_candidate_sampler``).

  ``P(k) = 1 / range_max``. With ``unique=True`` the expected counts are the
  exact inclusion probability ``S / range_max``.

  Args:
    key: a ``jax.random`` key.
    true_classes: ``[..., num_true]`` int target classes.
    num_true: number of targets per example T.
    num_sampled: number of classes to sample S.
    unique: sample S distinct classes (requires ``S <= range_max``).
    range_max: number of classes V.

  Returns:
    ``(sampled_candidates [S] int32 (int64 when range_max > 2**31 - 1),
    true_expected_count [..., T] float32, sampled_expected_count [S] float32)``.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> s, tq, sq = jbs.uniform_candidate_sampler(
    ...     jax.random.key(0), jnp.array([[1]]), 1, 5, True, 10)
    >>> [round(float(v), 3) for v in sq]
    [0.5, 0.5, 0.5, 0.5, 0.5]

  References:
    TensorFlow ``range_sampler.cc`` (``UniformSampler``).
  """
  id_dtype = _check_common(key, true_classes, num_true, num_sampled, unique, range_max)

  def p_of(k):
    return jnp.full(k.shape, 1.0 / range_max, jnp.float32)

  def draw(key, n):
    return jax.random.randint(key, (n,), 0, range_max, id_dtype)

  if unique:
    rate = math.inf if num_sampled == range_max else -range_max * math.log1p(
        -num_sampled / range_max)
    if num_sampled == range_max:
      sampled = jax.random.permutation(key, range_max).astype(id_dtype)
    elif range_max > _HUGE_RANGE:
      sampled = _unique_by_rejection(key, draw, num_sampled,
                                     _rejection_batch(rate, num_sampled), id_dtype)
    else:
      sampled = _unique_top_k(key, jnp.zeros((range_max,), jnp.float32), num_sampled)
  else:
    sampled = draw(key, num_sampled)
    rate = 0.0
  return _sampler_out(sampled, p_of, true_classes, rate, num_sampled, unique, range_max)


def fixed_unigram_candidate_sampler(
    key: jax.Array,
    true_classes: ArrayLike,
    num_true: int,
    num_sampled: int,
    unique: bool,
    range_max: int,
    *,
    unigrams: ArrayLike,
    distortion: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Samples classes from a fixed unigram distribution ``P(k) ∝ unigrams[k] ** distortion``.

  ``tf.random.fixed_unigram_candidate_sampler`` with in-memory ``unigrams``
  (no vocabulary file, no reserved ids or shards). ``distortion=0.75`` is
  word2vec's negative-sampling distribution (Mikolov et al. 2013).

  Args:
    key: a ``jax.random`` key.
    true_classes: ``[..., num_true]`` int target classes.
    num_true: number of targets per example T.
    num_sampled: number of classes to sample S.
    unique: sample S distinct classes (requires S <= number of classes with a
      non-zero count).
    range_max: number of classes V.
    unigrams: ``[range_max]`` non-negative counts (concrete: NumPy array, list
      or a non-traced jax array; like TF's attribute, they are data of the
      model, not of the batch).
    distortion: exponent applied to the counts.

  Returns:
    ``(sampled_candidates [S] int32 (int64 when range_max > 2**31 - 1),
    true_expected_count [..., T] float32, sampled_expected_count [S] float32)``.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> s, tq, sq = jbs.fixed_unigram_candidate_sampler(
    ...     jax.random.key(0), jnp.array([[0]]), 1, 2, False, 3,
    ...     unigrams=[1.0, 0.0, 3.0])
    >>> set(s.tolist()) <= {0, 2}
    True

  References:
    Mikolov et al. 2013, "Distributed Representations of Words and Phrases and
    their Compositionality"; TensorFlow ``range_sampler.cc``
    (``FixedUnigramSampler``).
  """
  _check_common(key, true_classes, num_true, num_sampled, unique, range_max)
  if _checks.is_traced(unigrams):
    raise TypeError("unigrams must be concrete (NumPy array or list), not a traced array.")
  counts = np.asarray(unigrams, dtype=np.float64)
  if counts.shape != (range_max,):
    raise ValueError(f"unigrams must have shape ({range_max},) (range_max); got {counts.shape}.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0) or not np.any(counts > 0):
    raise ValueError("unigrams must be finite, >= 0 and not all zero.")
  if (isinstance(distortion, bool) or not isinstance(distortion, (int, float, np.floating))
      or not math.isfinite(distortion) or distortion < 0):
    raise ValueError(f"distortion must be a finite float >= 0; got {distortion!r}.")
  weights = np.where(counts > 0, counts ** float(distortion), 0.0)
  p = weights / weights.sum()
  nnz = int(np.count_nonzero(p))
  if unique and num_sampled > nnz:
    raise ValueError(
        f"num_sampled must be <= the number of classes with a non-zero count ({nnz}) when"
        f" unique=True; got {num_sampled}.")
  p_dev = jnp.asarray(p, jnp.float32)

  def p_of(k):
    return jnp.take(p_dev, k, mode="clip")

  if unique:
    with np.errstate(divide="ignore"):
      log_p = jnp.asarray(np.log(p), jnp.float32)
    sampled = _unique_top_k(key, log_p, num_sampled)
    rate = _unigram_rate(p, num_sampled)
  else:  # inverse CDF (float64 cumsum on the host).
    cdf = jnp.asarray(np.cumsum(p)[:-1], jnp.float32)
    u = jax.random.uniform(key, (num_sampled,), jnp.float32)
    sampled = jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)
    # Float rounding can land on a zero-count class next to the boundary: never sample those.
    sampled = jnp.where(jnp.take(p_dev, sampled) > 0, sampled, int(np.flatnonzero(p)[-1]))
    rate = 0.0
  return _sampler_out(sampled, p_of, true_classes, rate, num_sampled, unique, range_max)


def all_candidate_sampler(
    true_classes: ArrayLike,
    num_true: int,
    num_sampled: int,
    unique: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Returns every class of ``[0, num_sampled)`` (``tf.random.all_candidate_sampler``).

  Deterministic (no key): ``sampled_candidates = arange(num_sampled)`` and
  every expected count is 1, so a sampled loss built on it is the exact loss
  over ``num_sampled`` classes (useful to test a sampled loss against the full
  softmax). ``unique`` is accepted for TensorFlow's signature and changes
  nothing. As in TensorFlow, ``true_classes`` must lie in ``[0, num_sampled)``
  (concrete ones outside raise ``ValueError``; under ``jit`` their expected
  count is NaN).

  Args:
    true_classes: ``[..., num_true]`` int target classes.
    num_true: number of targets per example T.
    num_sampled: S, the number of classes (all of them are returned).
    unique: ignored (every class is returned once).

  Returns:
    ``(sampled_candidates [S] int32, true_expected_count [..., T] float32 (ones),
    sampled_expected_count [S] float32 (ones))``.

  Examples:
    >>> import jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> s, tq, sq = jbs.all_candidate_sampler(jnp.array([[1], [3]]), 1, 4, True)
    >>> s.tolist(), tq.tolist(), sq.tolist()
    ([0, 1, 2, 3], [[1.0], [1.0]], [1.0, 1.0, 1.0, 1.0])

  References:
    TensorFlow ``range_sampler.cc`` (``AllSampler``).
  """
  _check_common(None, true_classes, num_true, num_sampled, unique, num_sampled,
                needs_key=False)
  sampled = jnp.arange(num_sampled, dtype=_id_dtype(num_sampled))
  ones = lambda k: jnp.ones(k.shape, jnp.float32)  # noqa: E731
  # Expected count 1 = a "unique" sample that always holds the class (rate inf).
  return _sampler_out(sampled, ones, true_classes, math.inf, num_sampled, True, num_sampled)
