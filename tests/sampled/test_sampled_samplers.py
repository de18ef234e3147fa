"""Candidate samplers: distinctness, distributions, expected counts vs empirical rates."""
import jax
import jax.numpy as jnp
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

import jax_bigsoftmax as jbs


def _log_uniform_p(v):
  k = np.arange(v, dtype=np.float64)
  return np.log((k + 2) / (k + 1)) / np.log(v + 1)


def _draw(sampler, reps, *args, **kw):
  """reps independent calls under jit+vmap; returns (sampled [R, S], outputs of call 0)."""
  keys = jax.random.split(jax.random.key(0), reps)
  f = jax.jit(jax.vmap(lambda k: sampler(k, *args, **kw)))
  return jax.tree.map(np.asarray, f(keys))


def _inclusion(samples, v):
  counts = np.zeros(v)
  for row in samples:
    counts[np.unique(row)] += 1
  return counts / samples.shape[0]


def test_unique_samples_are_distinct_and_static_under_jit():
  s, tq, sq = _draw(jbs.log_uniform_candidate_sampler, 64, jnp.zeros((3, 2), jnp.int32), 2, 40,
                    True, 50)
  assert s.shape == (64, 40) and tq.shape == (64, 3, 2) and sq.shape == (64, 40)
  assert s.dtype == np.int32 and s.min() >= 0 and s.max() < 50
  assert all(len(set(row.tolist())) == 40 for row in s)


def test_unique_is_sequential_sampling_without_replacement():
  """P(first=a, second=b) = p_a * p_b / (1 - p_a), TF's rejection loop on V=4."""
  v, reps = 4, 40000
  p = _log_uniform_p(v)
  s, _, _ = _draw(jbs.log_uniform_candidate_sampler, reps, jnp.zeros((1, 1), jnp.int32), 1, 2,
                  True, v)
  emp = np.zeros((v, v))
  np.add.at(emp, (s[:, 0], s[:, 1]), 1)
  emp /= reps
  want = p[:, None] * p[None, :] / (1 - p[:, None])
  np.fill_diagonal(want, 0)
  se = np.sqrt(want * (1 - want) / reps)
  assert np.all(np.abs(emp - want) <= 5 * se + 1e-9), (emp, want)


def test_log_uniform_frequencies_with_replacement():
  v, reps, s_ = 30, 200, 500
  s, tq, sq = _draw(jbs.log_uniform_candidate_sampler, reps, jnp.arange(v)[:, None], 1, s_,
                    False, v)
  p = _log_uniform_p(v)
  freq = np.bincount(s.ravel(), minlength=v) / s.size
  se = np.sqrt(p * (1 - p) / s.size)
  assert np.all(np.abs(freq - p) < 5 * se)
  np.testing.assert_allclose(tq[0, :, 0], s_ * p, rtol=1e-5)  # TF: S * P(k)
  np.testing.assert_allclose(sq[0], s_ * p[s[0]], rtol=1e-5)


@pytest.mark.parametrize("v,s_", [(100, 20), (60, 45)])
def test_unique_expected_counts_match_empirical_inclusion(v, s_):
  reps = 20000
  s, tq, sq = _draw(jbs.log_uniform_candidate_sampler, reps, jnp.arange(v)[:, None], 1, s_,
                    True, v)
  pi = tq[0, :, 0]  # the returned expected count of every class
  emp = _inclusion(s, v)
  se = np.sqrt(np.maximum(pi * (1 - pi), 1e-4) / reps)
  err = np.abs(emp - pi)
  assert np.all(err < 4 * se + 0.008), (err.max(), np.argmax(err))
  np.testing.assert_allclose(pi.sum(), s_, rtol=1e-4)  # inclusion probabilities sum to S
  np.testing.assert_allclose(sq, pi[s], rtol=1e-6)  # same numbers for sampled classes
  # The with-replacement count S * P(k) (what unique=False returns) is far off here.
  assert np.max(np.abs(emp - s_ * _log_uniform_p(v))) > 0.1


def test_uniform_sampler_exact_counts_and_frequencies():
  v, s_, reps = 20, 7, 4000
  s, tq, sq = _draw(jbs.uniform_candidate_sampler, reps, jnp.array([[3], [19]]), 1, s_, True, v)
  np.testing.assert_allclose(sq, s_ / v, rtol=1e-6)
  np.testing.assert_allclose(tq, s_ / v, rtol=1e-6)
  emp = _inclusion(s, v)
  assert np.all(np.abs(emp - s_ / v) < 5 * np.sqrt(0.35 * 0.65 / reps))
  s2, tq2, _ = _draw(jbs.uniform_candidate_sampler, 4, jnp.array([[3]]), 1, 5, False, v)
  np.testing.assert_allclose(tq2, 5 / v, rtol=1e-6)
  full, fq, _ = _draw(jbs.uniform_candidate_sampler, 3, jnp.array([[3]]), 1, v, True, v)
  assert all(sorted(r.tolist()) == list(range(v)) for r in full)
  np.testing.assert_allclose(fq, 1.0)


def test_unigram_sampler_distortion_zero_counts_and_inclusion():
  rng = np.random.RandomState(0)
  v = 150
  counts = np.floor(1000.0 / (np.arange(v) + 1) ** 1.1 * rng.uniform(0.5, 1.5, v))
  counts[[3, 40, 77]] = 0.0
  zero = counts == 0
  p = counts ** 0.75 / np.sum(counts ** 0.75)
  reps = 20000
  s, tq, sq = _draw(jbs.fixed_unigram_candidate_sampler, reps, jnp.arange(v)[:, None], 1, 25,
                    True, v, unigrams=counts, distortion=0.75)
  assert not np.isin(s, np.flatnonzero(zero)).any()  # zero-count classes are never sampled
  pi = tq[0, :, 0]
  np.testing.assert_allclose(pi[zero], 0.0)
  emp = _inclusion(s, v)
  se = np.sqrt(np.maximum(pi * (1 - pi), 1e-4) / reps)
  assert np.all(np.abs(emp - pi) < 4 * se + 0.008), np.abs(emp - pi).max()
  np.testing.assert_allclose(pi.sum(), 25, rtol=1e-4)
  np.testing.assert_allclose(sq, pi[s], rtol=1e-6)
  r, tq2, _ = _draw(jbs.fixed_unigram_candidate_sampler, 100, jnp.arange(v)[:, None], 1, 400,
                    False, v, unigrams=counts, distortion=0.75)
  assert not np.isin(r, np.flatnonzero(zero)).any()
  freq = np.bincount(r.ravel(), minlength=v) / r.size
  assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / r.size) + 1e-9)
  np.testing.assert_allclose(tq2[0, :, 0], 400 * p, rtol=1e-5)


def test_fixed_key_is_deterministic():
  f = jax.jit(lambda k: jbs.log_uniform_candidate_sampler(k, jnp.zeros((2, 1), jnp.int32), 1,
                                                           16, True, 1000))
  a, b = f(jax.random.key(4)), f(jax.random.key(4))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], f(jax.random.key(5))[0])


def test_sampler_errors():
  k, tc = jax.random.key(0), jnp.zeros((2, 1), jnp.int32)
  with pytest.raises(ValueError, match="num_sampled must be <= range_max"):
    jbs.log_uniform_candidate_sampler(k, tc, 1, 11, True, 10)
  with pytest.raises(ValueError, match=r"true_classes must have shape \[..., num_true\]"):
    jbs.log_uniform_candidate_sampler(k, tc, 2, 5, True, 10)
  with pytest.raises(ValueError, match="key must be a jax.random key"):
    jbs.uniform_candidate_sampler(None, tc, 1, 5, True, 10)
  with pytest.raises(TypeError, match="unique must be a Python bool"):
    jbs.uniform_candidate_sampler(k, tc, 1, 5, 1, 10)
  with pytest.raises(ValueError, match=r"unigrams must have shape \(10,\)"):
    jbs.fixed_unigram_candidate_sampler(k, tc, 1, 5, True, 10, unigrams=np.ones(9))
  with pytest.raises(ValueError, match="non-zero count"):
    jbs.fixed_unigram_candidate_sampler(k, tc, 1, 3, True, 4, unigrams=[1.0, 0, 0, 1.0])
  with pytest.raises(ValueError, match="unigrams must be finite"):
    jbs.fixed_unigram_candidate_sampler(k, tc, 1, 1, True, 2, unigrams=[1.0, -1.0])
  with pytest.raises(TypeError, match="unigrams must be concrete"):
    jax.jit(lambda u: jbs.fixed_unigram_candidate_sampler(k, tc, 1, 1, True, 2, unigrams=u))(
        jnp.ones(2))
  with pytest.raises(TypeError, match="true_classes must be an integer"):
    jbs.log_uniform_candidate_sampler(k, tc.astype(jnp.float32), 1, 5, True, 10)


_SAMPLERS = {
    "log_uniform": lambda key, y, s, unique, v: jbs.log_uniform_candidate_sampler(
        key, y, 1, s, unique, v),
    "uniform": lambda key, y, s, unique, v: jbs.uniform_candidate_sampler(key, y, 1, s, unique, v),
    "unigram": lambda key, y, s, unique, v: jbs.fixed_unigram_candidate_sampler(
        key, y, 1, s, unique, v, unigrams=np.arange(1, v + 1) ** -1.1, distortion=0.75),
}


@pytest.mark.slow
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    name=st.sampled_from(sorted(_SAMPLERS)), v=st.integers(2, 300), frac=st.floats(0.0, 1.0),
    unique=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_sampler_properties(name, v, frac, unique, seed):
  """Any sampler, range and S: ids in range, distinct when unique, valid expected counts."""
  s = 1 + int(frac * (v - 2)) if unique else 1 + int(frac * 2 * v)
  y = jnp.asarray(np.random.default_rng(seed).integers(0, v, size=(5, 1)))
  sampled, true_ec, sampled_ec = (np.asarray(a) for a in _SAMPLERS[name](
      jax.random.key(seed), y, s, unique, v))
  assert sampled.shape == (s,) and true_ec.shape == (5, 1) and sampled_ec.shape == (s,)
  assert sampled.min() >= 0 and sampled.max() < v
  assert np.all(np.isfinite(true_ec)) and np.all(true_ec > 0)
  assert np.all(sampled_ec > 0)
  if unique:
    assert len(set(sampled.tolist())) == s
    # Inclusion probabilities: at most 1 each, and S in total over the whole range.
    assert np.all(sampled_ec <= 1 + 1e-6) and np.all(true_ec <= 1 + 1e-6)
  else:
    # With replacement the expected count of class k is S * P(k): the same class has
    # the same count wherever it appears.
    for k in np.unique(sampled):
      assert np.ptp(sampled_ec[sampled == k]) <= 1e-6 * max(1.0, sampled_ec[sampled == k][0])
