"""Candidate sampling (issue 18): nce_loss, compute_sampled_logits, accidental hits,
all-candidate sampler, sharded weights and int64 ranges, against TensorFlow fixtures
(tests/fixtures/make_fixtures_nce_tf.py) and NumPy float64 references; the NCELoss head."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_bigsoftmax as jbs
from jax_bigsoftmax.sampled import _samplers as samplers
from helpers import FIXTURES

TF = np.load(os.path.join(FIXTURES, "nce_tf.npz"))
FLT_MAX = float(np.finfo(np.float32).max)


def _case(name):
  return {k.split("/", 1)[1]: TF[k] for k in TF.files if k.startswith(name + "/")}


def _cases(prefix):
  return sorted({k.split("/")[0] for k in TF.files if k.startswith(prefix)})


def _sv(c):
  return (c["sampled"], c["true_ec"], c["sampled_ec"])


def _naive_nce(c):
  """Independent float64 NumPy loop of TF's nce_loss (from its definition)."""
  w, b, x = (c[k].astype(np.float64) for k in ("weights", "biases", "inputs"))
  labels, sampled, t = c["labels"], c["sampled"], int(c["num_true"])
  out = []
  for i in range(x.shape[0]):
    loss = 0.0
    for j, y in enumerate(labels[i]):
      z = x[i] @ w[y] + b[y] - np.log(c["true_ec"][i, j])
      loss += np.logaddexp(0.0, -z) * (1 / t) + np.logaddexp(0.0, z) * (1 - 1 / t)
    for j, s in enumerate(sampled):
      last = not np.any(sampled[j + 1:] == s)
      if bool(c["remove"]) and s in labels[i] and last:
        continue  # -FLT_MAX logit, label 0: contributes 0
      loss += np.logaddexp(0.0, x[i] @ w[s] + b[s] - np.log(c["sampled_ec"][j]))
    out.append(loss)
  return np.array(out)


def _in_precision(c, fn):
  if c["inputs"].dtype == np.float64:
    with jax.enable_x64(True):
      return fn(1e-10)
  return fn(2e-5)


# ----------------------------------------------------------------------------- nce_loss


@pytest.mark.parametrize("name", _cases("nce_"))
def test_nce_loss_values_and_grads_match_tf(name):
  c = _case(name)

  def run(rtol):
    @jax.jit
    def f(w, b, x):
      return jbs.nce_loss(w, b, c["labels"], x, int(c["num_sampled"]), c["weights"].shape[0],
                          int(c["num_true"]), _sv(c), bool(c["remove"]))

    args = tuple(jnp.asarray(c[k]) for k in ("weights", "biases", "inputs"))
    loss = f(*args)
    assert loss.dtype == c["loss"].dtype
    np.testing.assert_allclose(loss, c["loss"], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(loss, _naive_nce(c), rtol=max(rtol, 1e-5), atol=1e-5)
    cot = jnp.asarray(c["cot"])
    grads = jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2))(*args)
    for got, key in zip(grads, ("grad_weights", "grad_biases", "grad_inputs")):
      np.testing.assert_allclose(got, c[key], rtol=rtol * 10, atol=rtol * 10, err_msg=key)

  _in_precision(c, run)


@pytest.mark.slow
def test_nce_check_grads_vmap_leading_dims_and_bf16():
  c = _case("nce_t3_hits")
  w, b, x = (jnp.asarray(c[k]) for k in ("weights", "biases", "inputs"))
  lab, s, v = jnp.asarray(c["labels"]), int(c["num_sampled"]), c["weights"].shape[0]

  def f(w, b, x, lab=lab):
    return jbs.nce_loss(w, b, lab, x, s, v, 3, _sv(c), True)

  with jax.enable_x64(True):
    w64, b64, x64 = (a.astype(jnp.float64) for a in (w, b, x))
    check_grads(f, (w64, b64, x64), order=1, modes=("rev",))
  full = f(w, b, x)
  per_row = jax.vmap(lambda xi, li, tq: jbs.nce_loss(
      w, b, li[None], xi[None], s, v, 3, (c["sampled"], tq[None], c["sampled_ec"]), True)[0])(
          x, lab, jnp.asarray(c["true_ec"]))
  np.testing.assert_allclose(per_row, full, rtol=1e-6)
  x3 = x.reshape(2, 5, -1)
  sv3 = (c["sampled"], c["true_ec"].reshape(2, 5, 3), c["sampled_ec"])
  out = jbs.nce_loss(w, b, lab.reshape(2, 5, 3), x3, s, v, 3, sv3, True)
  np.testing.assert_allclose(out.reshape(-1), full, rtol=1e-6)
  bf = jbs.nce_loss(w.astype(jnp.bfloat16), b, lab, x.astype(jnp.bfloat16), s, v, 3, _sv(c), True)
  assert bf.dtype == jnp.float32
  np.testing.assert_allclose(bf, full, rtol=0.05, atol=0.05)


def test_nce_default_sampler_needs_key_and_out_of_range_labels():
  w, b, x = jnp.ones((20, 4)) * 0.1, jnp.zeros((20,)), jnp.ones((3, 4))
  y = jnp.array([[1], [2], [3]])
  with pytest.raises(ValueError, match="key"):
    jbs.nce_loss(w, b, y, x, 5, 20)
  out = jbs.nce_loss(w, b, y, x, 5, 20, key=jax.random.key(0))
  assert out.shape == (3,) and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match="labels"):
    jbs.nce_loss(w, b, jnp.array([[1], [20], [3]]), x, 5, 20, key=jax.random.key(0))
  sv = jbs.log_uniform_candidate_sampler(jax.random.key(0), jnp.zeros((3, 1), jnp.int32), 1, 5,
                                         True, 20)
  bad = jax.jit(lambda y: jbs.nce_loss(w, b, y, x, 5, 20, 1, sv))(jnp.array([[1], [-1], [25]]))
  assert np.isfinite(bad[0]) and np.all(np.isnan(bad[1:]))


# ----------------------------------------------------------------------------- sampled logits


@pytest.mark.parametrize("name", _cases("logits_"))
def test_compute_sampled_logits_matches_tf(name):
  c = _case(name)
  f = jax.jit(lambda w, b, x: jbs.compute_sampled_logits(
      w, b, c["labels"], x, int(c["num_sampled"]), c["weights"].shape[0], int(c["num_true"]),
      _sv(c), bool(c["subtract_log_q"]), bool(c["remove"])))
  logits, labels = f(c["weights"], c["biases"], c["inputs"])
  np.testing.assert_allclose(labels, c["out_labels"], rtol=0, atol=0)
  np.testing.assert_allclose(logits, c["logits"], rtol=2e-5, atol=2e-5)


def test_sampled_softmax_and_nce_are_built_on_compute_sampled_logits():
  c = _case("logits_logq_hits")
  args = (c["weights"], c["biases"], c["labels"], c["inputs"], int(c["num_sampled"]),
          c["weights"].shape[0], int(c["num_true"]), _sv(c))
  logits, labels = jbs.compute_sampled_logits(*args, True, True)
  softmax = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(labels * logits, axis=-1)
  np.testing.assert_allclose(jbs.sampled_softmax_loss(*args, True), softmax, rtol=1e-5)
  sig = jnp.sum(jax.nn.softplus(logits) - labels * logits, axis=-1)
  np.testing.assert_allclose(jbs.nce_loss(*args, True), sig, rtol=1e-5)


# ----------------------------------------------------------------------------- accidental hits


def test_compute_accidental_hits_matches_tf():
  c = _case("hits")
  mask = jax.jit(jbs.compute_accidental_hits, static_argnums=2)(c["true"], c["sampled"], 3)
  assert mask.shape == (9, 11) and mask.dtype == jnp.bool_
  ours = set(zip(*(a.tolist() for a in np.nonzero(np.asarray(mask)))))
  theirs = set(zip(c["indices"].tolist(), c["ids"].tolist()))
  assert ours == theirs and len(theirs) > 3
  assert np.all(c["weights"] == -FLT_MAX)
  # TF reports a pair once per matching target (duplicated targets repeat it).
  counts = {p: 0 for p in theirs}
  for p in zip(c["indices"].tolist(), c["ids"].tolist()):
    counts[p] += 1
  assert any(v > 1 for v in counts.values())
  with pytest.raises(ValueError, match="true_classes"):
    jbs.compute_accidental_hits(c["true"], c["sampled"], 2)


# ----------------------------------------------------------------------------- sharded weights


def _has_vocab_concat(jaxpr, vocab):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "concatenate" and any(
        v.aval.shape[:1] == (vocab,) for v in eqn.outvars):
      return True
    for p in eqn.params.values():
      sub = getattr(p, "jaxpr", p)
      if hasattr(sub, "eqns") and _has_vocab_concat(sub, vocab):
        return True
  return False


@pytest.mark.parametrize("name", ["shard_nce", "shard_softmax"])
def test_sharded_weights_match_tf_and_concatenated(name):
  c = _case(name)
  sizes = c["sizes"].tolist()
  bounds = np.cumsum([0] + sizes)
  ws = [jnp.asarray(c["weights"][bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]
  bs = [jnp.asarray(c["biases"][bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]
  fn = jbs.nce_loss if name == "shard_nce" else jbs.sampled_softmax_loss
  v = int(bounds[-1])

  def f(ws, bs, x):
    return fn(ws, bs, c["labels"], x, int(c["num_sampled"]), v, int(c["num_true"]), _sv(c),
              bool(c["remove"]))

  x = jnp.asarray(c["inputs"])
  loss = jax.jit(f)(ws, bs, x)
  np.testing.assert_allclose(loss, c["loss"], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(
      loss, f(jnp.asarray(c["weights"]), jnp.asarray(c["biases"]), x), rtol=1e-6, atol=1e-6)
  cot = jnp.asarray(c["cot"])
  gw, gb, gx = jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2))(ws, bs, x)
  for i in range(len(sizes)):
    np.testing.assert_allclose(gw[i], c[f"grad_weights_{i}"], rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(gb[i], c[f"grad_biases_{i}"], rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(gx, c["grad_inputs"], rtol=2e-4, atol=2e-4)
  # The shards are never concatenated into a [V, ...] array (forward or backward).
  jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda ws, bs: jnp.sum(f(ws, bs, x))))(ws, bs).jaxpr
  assert not _has_vocab_concat(jaxpr, v)
  # Row gather of the row path with shards; out-of-range ids are NaN rows under jit.
  rows = jax.jit(lambda ids: jbs.gather_sampled_rows(ws, bs, ids[:, None], ids))(
      jnp.array([0, v - 1, v, -1]))
  np.testing.assert_array_equal(rows.sampled_weights[:2], c["weights"][[0, v - 1]])
  assert np.all(np.isnan(rows.sampled_weights[2:])) and np.all(np.isnan(rows.true_biases[2:]))


def test_shard_errors():
  x, y = jnp.ones((2, 4)), jnp.array([[0], [1]])
  sv = (jnp.array([2, 3]), jnp.ones((2, 1)), jnp.ones((2,)))
  with pytest.raises(ValueError, match="shards"):
    jbs.nce_loss([jnp.ones((3, 4)), jnp.ones((3, 5))], None, y, x, 2, 6, 1, sv)
  with pytest.raises(ValueError, match="biases"):
    jbs.nce_loss([jnp.ones((3, 4)), jnp.ones((3, 4))], [jnp.ones(3)], y, x, 2, 6, 1, sv)
  with pytest.raises(ValueError, match="weights"):
    jbs.nce_loss([], None, y, x, 2, 6, 1, sv)
  with pytest.raises(TypeError, match="shards"):
    jbs.scatter_add_sampled_rows([jnp.ones((3, 4))], None, y, sv[0], None)


# ----------------------------------------------------------------------------- samplers


def test_all_candidate_sampler_matches_tf():
  c = _case("all")
  s, tq, sq = jax.jit(jbs.all_candidate_sampler, static_argnums=(1, 2, 3))(c["true"], 2, 5, True)
  np.testing.assert_array_equal(s, c["sampled"])
  np.testing.assert_array_equal(tq, c["true_ec"])
  np.testing.assert_array_equal(sq, c["sampled_ec"])
  with pytest.raises(ValueError, match="true_classes"):
    jbs.all_candidate_sampler(np.array([[7]]), 1, 5, True)  # TF: out of range [0, 5)
  # With every class as candidate, sampled softmax is the exact softmax.
  rng = np.random.RandomState(0)
  w, b, x = rng.randn(5, 3), rng.randn(5), rng.randn(4, 3)
  y = np.array([[0], [1], [4], [2]])
  sv = jbs.all_candidate_sampler(y, 1, 5, True)
  loss = jbs.sampled_softmax_loss(w.astype(np.float32), b.astype(np.float32), y,
                                  x.astype(np.float32), 5, 5, 1, sv, True)
  logits = x @ w.T + b
  ref = np.log(np.exp(logits).sum(-1)) - logits[np.arange(4), y[:, 0]]
  np.testing.assert_allclose(loss, ref, rtol=1e-4, atol=1e-6)


def _max_array_size(jaxpr):
  m = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      m = max(m, int(np.prod(getattr(v.aval, "shape", ()) or (1,))))
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          m = max(m, _max_array_size(sub))
  return m


@pytest.mark.parametrize("sampler", ["log_uniform", "uniform"])
def test_huge_range_unique_sampler_statistics_match_tf(sampler):
  c, h = _case(f"huge_{sampler}"), _case("huge")
  calls, s, v = int(h["num_calls"]), int(h["num_sampled"]), int(h["range_max"])
  fn = getattr(jbs, f"{sampler}_candidate_sampler")
  with jax.enable_x64(True):
    true = jnp.asarray(h["true"])
    draw = jax.jit(jax.vmap(lambda k: fn(k, true, 1, s, True, v)))
    ids, tq, sq = draw(jax.random.split(jax.random.key(5), calls))
    assert _max_array_size(jax.make_jaxpr(lambda k: fn(k, true, 1, s, True, v))(
        jax.random.key(0)).jaxpr) < 10 * s * 64  # nothing of size range_max
    ids, tq, sq = np.asarray(ids), np.asarray(tq), np.asarray(sq)
  assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < v
  assert all(len(set(r.tolist())) == s for r in ids)  # distinct
  assert np.all((sq > 0) & (sq <= 1)) and np.all((tq > 0) & (tq <= 1))
  small = np.array([(ids == k).sum() for k in range(16)]) / calls
  bucket = np.histogram(ids.ravel(), bins=h["edges"])[0] / calls
  # Same sampling distribution as TF's: per-call inclusion of ids 0..15 and of magnitudes.
  for ours, theirs in ((small, c["small_freq"]), (bucket, c["bucket_freq"])):
    tol = 5 * np.sqrt((ours + theirs) / calls) + 0.02
    assert np.all(np.abs(ours - theirs) <= tol), (ours, theirs)
  if sampler == "uniform":
    assert bucket[31:].sum() > 0.7 * s  # most ids are beyond int32
  # Our expected counts are the inclusion probabilities the samples really have.
  ec = tq[0, :, 0]  # true classes 0, 1, 100, 2**31 + 5, 2**33 - 1
  se = np.sqrt(ec * (1 - ec) / calls)
  np.testing.assert_array_less(np.abs(ec[:2] - small[:2]), 5 * se[:2] + 0.01)
  # ... and close to TF's (num_tries) form for the same true classes.
  np.testing.assert_allclose(ec, c["last_true_ec"][:, 0], rtol=0.15)


def test_huge_range_needs_x64_and_rate_approximation():
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="x64"):
      jbs.log_uniform_candidate_sampler(jax.random.key(0), np.array([[1]]), 1, 4, True, 2**31)
    with pytest.raises(ValueError, match="x64"):
      jbs.uniform_candidate_sampler(jax.random.key(0), np.array([[1]]), 1, 4, False, 2**33)
    s, _, _ = jbs.uniform_candidate_sampler(jax.random.key(0), np.array([[1]]), 1, 4, True,
                                            2**31 - 1)
    assert s.dtype == jnp.int32 and int(s.min()) >= 0
  with jax.enable_x64(True):  # unique=False: TF's inverse CDF in float64 reaches every magnitude
    ids, _, sq = jbs.log_uniform_candidate_sampler(jax.random.key(1), np.array([[1]]), 1, 4000,
                                                   False, 2**33)
    ids = np.asarray(ids)
  assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 2**33
  frac = np.mean(ids >= 2**31)  # P(id >= 2**31) = 1 - log(2**31 + 1) / log(2**33 + 1)
  expect = 1 - np.log1p(2.0**31) / np.log1p(2.0**33)
  assert abs(frac - expect) < 5 * np.sqrt(expect * (1 - expect) / 4000)
  # Tail integral of the inclusion sum against the exact float64 sum (range 2**22).
  v, t = 2**22, 3000.0
  k = np.arange(v, dtype=np.float64)
  exact = np.sum(-np.expm1(-t * np.log1p(1 / (k + 1)) / np.log1p(v)))
  np.testing.assert_allclose(samplers._log_uniform_inclusion_sum(t, v), exact, rtol=1e-9)


def test_rejection_loop_is_tf_unique_sampling():
  """The static rejection loop and Gumbel-top-k give the same inclusion frequencies."""
  v, s, n = 30, 8, 3000
  p = np.log1p(1 / (np.arange(v) + 1.0)) / np.log1p(v)
  log_p = jnp.log(jnp.asarray(p, jnp.float32))
  draw = lambda k, m: jax.random.categorical(k, log_p, shape=(m,))  # noqa: E731
  keys = jax.random.split(jax.random.key(0), n)
  rej = jax.jit(jax.vmap(lambda k: samplers._unique_by_rejection(k, draw, s, 5, jnp.int32)))(keys)
  rej = np.asarray(rej)
  assert all(len(set(r.tolist())) == s for r in rej)
  gum = np.asarray(jax.jit(jax.vmap(lambda k: samplers._unique_top_k(k, log_p, s)))(keys))
  f_rej = np.bincount(rej.ravel(), minlength=v) / n
  f_gum = np.bincount(gum.ravel(), minlength=v) / n
  np.testing.assert_array_less(np.abs(f_rej - f_gum), 5 * np.sqrt(2 * 0.25 / n) + 0.005)
  # The first sample is one draw from P.
  first = np.bincount(rej[:, 0], minlength=v) / n
  np.testing.assert_array_less(np.abs(first - p), 5 * np.sqrt(p * (1 - p) / n) + 0.005)


def test_sampler_true_classes_validated():
  key = jax.random.key(0)
  for bad in (np.array([[-1]]), np.array([[10]]), np.array([[2**32 + 1]], np.int64)):
    for fn in (jbs.log_uniform_candidate_sampler, jbs.uniform_candidate_sampler):
      with pytest.raises(ValueError, match="true_classes"):
        fn(key, bad, 1, 3, True, 10)
    with pytest.raises(ValueError, match="true_classes"):
      jbs.fixed_unigram_candidate_sampler(key, bad, 1, 3, True, 10, unigrams=np.ones(10))
  f = jax.jit(lambda tc: jbs.log_uniform_candidate_sampler(key, tc, 1, 3, True, 10))
  _, tq, _ = f(jnp.array([[-1], [3], [10]]))
  assert np.isnan(tq[0, 0]) and np.isfinite(tq[1, 0]) and np.isnan(tq[2, 0])
  err, _ = jax.jit(jbs.checked(f))(jnp.array([[3], [12]]))
  with pytest.raises(Exception, match="true_classes"):
    err.throw()


@pytest.mark.parametrize("distortion", [float("nan"), float("inf"), -1.0])
def test_unigram_distortion_must_be_finite(distortion):
  with pytest.raises(ValueError, match="distortion"):
    jbs.fixed_unigram_candidate_sampler(jax.random.key(0), np.array([[1]]), 1, 2, False, 3,
                                        unigrams=[1.0, 2.0, 3.0], distortion=distortion)


# ----------------------------------------------------------------------------- NCELoss head


def test_nce_head_training_loss_is_nce_loss_and_eval_is_exact():
  v, d = 30, 5
  head = jbs.NCELoss(num_classes=v, features=d, num_sampled=6, num_true=2)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(3, 4, d), jnp.float32)
  y = jnp.asarray(rng.randint(0, v, (3, 4, 2)))
  y = y.at[0, 0].set(-100)  # an ignored (padded) position
  params = head.init(jax.random.key(0), x, y, deterministic=True)
  w, b = params["params"]["weight"], params["params"]["bias"]
  assert w.shape == (v, d) and b.shape == (v,) and not head.remove_accidental_hits
  b = jnp.asarray(rng.randn(v) * 0.3, jnp.float32)
  params = {"params": {"weight": w, "bias": b}}

  class SamplerKey(nn.Module):  # the key a root head draws with make_rng("sampler")
    @nn.compact
    def __call__(self):
      return self.make_rng("sampler")

  got = head.apply(params, x, y, rngs={"sampler": jax.random.key(1)})
  key = SamplerKey().apply({}, rngs={"sampler": jax.random.key(1)})
  yy = jnp.where(y == -100, 0, y)
  ref = jbs.nce_loss(w, b, yy, x, 6, v, 2, key=key)
  assert got[0, 0] == 0.0
  np.testing.assert_allclose(got.ravel()[1:], ref.ravel()[1:], rtol=1e-5)
  exact = head.apply(params, x, y, deterministic=True)
  logp = jax.nn.log_softmax(x @ w.T + b[None, None, :], axis=-1)
  ref_exact = -jnp.mean(jnp.take_along_axis(logp, yy, axis=-1), axis=-1)
  np.testing.assert_allclose(exact.ravel()[1:], ref_exact.ravel()[1:], rtol=1e-5)
  np.testing.assert_allclose(head.apply(params, x, method="log_prob"), logp, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(head.apply(params, x, method="predict"), jnp.argmax(logp, -1))
  nll = head.apply(params, x, yy[..., 0], method="nll")
  np.testing.assert_allclose(nll, -jnp.take_along_axis(logp, yy[..., :1], -1)[..., 0],
                             rtol=1e-5)
