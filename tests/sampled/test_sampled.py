"""Sampled softmax losses: TF / Paddle parity, errors, transforms, limit S -> V."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jax_bigsoftmax as jbs
from helpers import FIXTURES

TF = np.load(os.path.join(FIXTURES, "sampled_tf.npz"))
PD = np.load(os.path.join(FIXTURES, "sampled_paddle.npz"))


def _tf_case(name):
  return {k.split("/", 1)[1]: TF[k] for k in TF.files if k.startswith(name + "/")}


def _pd_case(name):
  return {k.split("/", 1)[1]: PD[k] for k in PD.files if k.startswith(name + "/")}


def _tf_loss(c, **kw):
  def f(w, b, x):
    return jbs.sampled_softmax_loss(
        w, b, c["labels"], x, c["sampled"].shape[0], c["weights"].shape[0],
        int(c["num_true"]), (c["sampled"], c["true_ec"], c["sampled_ec"]), bool(c["remove"]),
        **kw)
  return f


def _naive_tf(c):
  """Independent NumPy loop of TF's sampled softmax (float64)."""
  w, b, x = (c[k].astype(np.float64) for k in ("weights", "biases", "inputs"))
  labels, sampled = c["labels"], c["sampled"]
  out = []
  for i in range(x.shape[0]):
    zt = [x[i] @ w[y] + b[y] - np.log(c["true_ec"][i, j]) for j, y in enumerate(labels[i])]
    zs = []
    for j, s in enumerate(sampled):
      z = x[i] @ w[s] + b[s] - np.log(c["sampled_ec"][j])
      last = not np.any(sampled[j + 1:] == s)
      if bool(c["remove"]) and s in labels[i] and last:
        z = -np.inf
      zs.append(z)
    z = np.array(zt + zs)
    m = z.max()
    out.append(m + np.log(np.exp(z - m).sum()) - np.mean(zt))
  return np.array(out)


# ----------------------------------------------------------------------------- TF parity


@pytest.mark.parametrize("name", [str(n) for n in TF["cases"]])
def test_tf_parity_loss_and_grads(name):
  c = _tf_case(name)
  f = jax.jit(_tf_loss(c))
  args = (c["weights"], c["biases"], c["inputs"])
  if c["inputs"].dtype == np.float64:
    with jax.enable_x64(True):
      _compare_tf(c, f, args, rtol=1e-10)
  else:
    _compare_tf(c, f, args, rtol=2e-5)


def _compare_tf(c, f, args, rtol):
  args = tuple(jnp.asarray(a) for a in args)
  loss = f(*args)
  np.testing.assert_allclose(loss, c["loss"], rtol=rtol, atol=rtol)
  np.testing.assert_allclose(loss, _naive_tf(c), rtol=max(rtol, 1e-5), atol=1e-5)
  cot = jnp.asarray(c["cot"])
  gw, gb, gx = jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2))(*args)
  for got, key in ((gw, "grad_weights"), (gb, "grad_biases"), (gx, "grad_inputs")):
    np.testing.assert_allclose(got, c[key], rtol=rtol * 10, atol=rtol * 10, err_msg=key)


def test_tf_parity_hits_change_the_numbers():
  """The fixtures really exercise accidental hits (else the test above proves little)."""
  c = _tf_case("t1_hits")
  hit = (c["labels"][:, :1] == c["sampled"][None, :]).any(1)
  assert hit.any()
  off = jax.jit(lambda *a: jbs.sampled_softmax_loss(*a, 10, 50, 1, (
      c["sampled"], c["true_ec"], c["sampled_ec"]), False))(
          c["weights"], c["biases"], c["labels"], c["inputs"])
  assert not np.allclose(np.asarray(off)[hit], c["loss"][hit], rtol=1e-3)
  np.testing.assert_allclose(np.asarray(off)[~hit], c["loss"][~hit], rtol=2e-5)


def test_tf_repeated_candidates_mask_only_last_occurrence():
  c = _tf_case("t2_repeat")
  s = c["sampled"]
  assert len(set(s.tolist())) < len(s)  # the fixture has repeats that hit targets
  lab = c["labels"]
  repeat_hits = [i for i in range(lab.shape[0])
                 if any(np.sum(s == y) > 1 for y in set(lab[i].tolist()))]
  assert repeat_hits


# ----------------------------------------------------------------------------- row gradients


@pytest.mark.parametrize("name", [str(n) for n in TF["cases"]])
def test_row_gradients_match_tf(name):
  """Loss from gathered rows, and their gradient scattered back, equal TF's (IndexedSlices)."""
  c = _tf_case(name)
  sv = (c["sampled"], c["true_ec"], c["sampled_ec"])
  with jax.enable_x64(c["inputs"].dtype == np.float64):
    rtol = 1e-10 if c["inputs"].dtype == np.float64 else 2e-5
    w, b, x = (jnp.asarray(c[k]) for k in ("weights", "biases", "inputs"))
    cot = jnp.asarray(c["cot"])

    @jax.jit
    def step(w, b, x):
      rows = jbs.gather_sampled_rows(w, b, c["labels"], c["sampled"])
      f = lambda r, x: jnp.sum(jbs.sampled_softmax_loss_from_rows(
          r, c["labels"], x, sv, bool(c["remove"])) * cot)
      (g_rows, gx) = jax.grad(f, argnums=(0, 1))(rows, x)
      loss = jbs.sampled_softmax_loss_from_rows(rows, c["labels"], x, sv, bool(c["remove"]))
      dense = jbs.scatter_add_sampled_rows(jnp.zeros_like(w), jnp.zeros_like(b), c["labels"],
                                           c["sampled"], g_rows)
      return loss, dense, gx, g_rows

    loss, (gw, gb), gx, g_rows = step(w, b, x)
    assert g_rows.sampled_weights.shape == (c["sampled"].shape[0], w.shape[1])
    np.testing.assert_allclose(loss, c["loss"], rtol=rtol, atol=rtol)
    for got, key in ((gw, "grad_weights"), (gb, "grad_biases"), (gx, "grad_inputs")):
      np.testing.assert_allclose(got, c[key], rtol=rtol * 10, atol=rtol * 10, err_msg=key)


def test_scatter_add_is_sparse_sgd_and_keeps_untouched_rows():
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(40, 6)).astype(np.float32))
  b = jnp.asarray(rng.normal(size=(40,)).astype(np.float32))
  y = jnp.array([[1, 2], [2, 7], [5, 1]])
  sampled = jnp.array([7, 9, 9, 30])  # 7 is also a label; 9 repeats: both accumulate
  rows = jbs.gather_sampled_rows(w, b, y, sampled)
  ones = jax.tree.map(jnp.ones_like, rows)
  w2, b2 = jax.jit(jbs.scatter_add_sampled_rows)(w, b, y, sampled, ones)
  count = np.bincount(np.concatenate([np.ravel(y), np.asarray(sampled)]), minlength=40)
  np.testing.assert_allclose(w2 - w, np.repeat(count[:, None], 6, 1), atol=1e-6)
  np.testing.assert_allclose(b2 - b, count, atol=1e-6)
  w3, b3 = jbs.scatter_add_sampled_rows(w, None, y, sampled, ones)
  assert b3 is None
  np.testing.assert_array_equal(w3, w2)


def test_rows_api_nan_and_errors():
  w, b = jnp.ones((20, 4)), jnp.zeros((20,))
  x, y = jnp.ones((3, 4)), jnp.array([[1], [2], [3]])
  sv = jbs.log_uniform_candidate_sampler(jax.random.key(0), y, 1, 5, True, 20)

  @jax.jit
  def loss(y):
    rows = jbs.gather_sampled_rows(w, b, y, sv[0])
    return jbs.sampled_softmax_loss_from_rows(rows, y, x, sv)

  out = np.asarray(loss(jnp.array([[1], [-1], [25]])))
  assert np.isfinite(out[0]) and np.isnan(out[1:]).all()
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 20\)"):
    jbs.gather_sampled_rows(w, b, jnp.array([[1], [20], [3]]), sv[0])
  rows = jbs.gather_sampled_rows(w, b, y, sv[0])
  with pytest.raises(ValueError, match="rows.sampled_weights"):
    jbs.sampled_softmax_loss_from_rows(rows._replace(sampled_weights=jnp.ones((4, 4))), y, x, sv)
  with pytest.raises(TypeError, match="SampledRows"):
    jbs.sampled_softmax_loss_from_rows(tuple(rows), y, x, sv)
  with pytest.raises(ValueError, match="rows.true_biases"):
    jbs.scatter_add_sampled_rows(w, b, y, sv[0], rows._replace(true_biases=jnp.ones((3,))))
  with pytest.raises(ValueError, match="sampled must"):
    jbs.gather_sampled_rows(w, b, y, sv[0][None])


# ----------------------------------------------------------------------------- Paddle


@pytest.mark.parametrize("name", [str(n) for n in PD["cases"]])
def test_paddle_customized_parity(name):
  c = _pd_case(name)
  t, s = int(c["num_true"]), int(c["num_samples"])

  @jax.jit
  def f(logits):
    return jbs.sampled_softmax_with_cross_entropy(
        logits, c["label"], s, t, bool(c["remove"]), True, c["samples"], c["probs"])

  logits = jnp.asarray(c["logits"])
  out = np.asarray(f(logits))
  assert out.shape == (logits.shape[0], 1)
  # Paddle's softmax clips logits - max at -64 (ValueClip), so a target with
  # log-probability < -64 costs exactly 64 there; we return the exact value.
  sat = c["loss"][:, 0] == 64.0
  assert sat.any() == (name == "t1_zero_prob")
  assert (out[sat] > 64.0).all()
  np.testing.assert_allclose(out[~sat], c["loss"][~sat], rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda z: jnp.sum(f(z) * c["cot"]))(logits)
  np.testing.assert_allclose(g, c["grad_logits"], rtol=1e-5, atol=1e-6)


def test_paddle_customized_soft_labels_are_one_over_t():
  """num_true > 1: each target gets 1/T (independent NumPy check)."""
  c = _pd_case("t2_nohits")
  lg, smp, pr = c["logits"].astype(np.float64), c["samples"], c["probs"].astype(np.float64)
  z = np.take_along_axis(lg, smp, 1) - np.log(pr)
  want = np.log(np.exp(z).sum(1)) - z[:, :2].mean(1)
  got = jax.jit(lambda lg: jbs.sampled_softmax_with_cross_entropy(
      lg, c["label"], 8, 2, False, True, smp, pr.astype(np.float32)))(lg.astype(np.float32))
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-5)


def test_paddle_sampling_mode_matches_tf_function_on_logits():
  """Without customized samples: same sampler and formula as sampled_softmax_loss."""
  key = jax.random.key(3)
  rng = np.random.RandomState(0)
  x, w, b = rng.randn(6, 5), rng.randn(40, 5), rng.randn(40)
  x, w, b = (a.astype(np.float32) for a in (x, w, b))
  y = rng.randint(0, 40, (6, 2))
  pd = jax.jit(lambda lg, k: jbs.sampled_softmax_with_cross_entropy(lg, y, 7, 2, key=k))
  tf = jax.jit(lambda k: jbs.sampled_softmax_loss(w, b, y, x, 7, 40, 2, key=k))
  np.testing.assert_allclose(pd(x @ w.T + b[None, :], key)[:, 0], tf(key), rtol=1e-5)
  # seed is used when key is None
  a = jax.jit(lambda lg: jbs.sampled_softmax_with_cross_entropy(lg, y, 7, 2, seed=5))(x @ w.T)
  np.testing.assert_allclose(a, pd(x @ w.T, jax.random.key(5)), rtol=1e-6)


# ----------------------------------------------------------------------------- limit S -> V


@pytest.mark.slow
def test_sampled_loss_approaches_full_loss_as_s_grows():
  rng = np.random.RandomState(0)
  v, d, n = 400, 16, 64
  w = jnp.asarray(rng.randn(v, d) * 0.3, jnp.float32)
  b = jnp.asarray(rng.randn(v) * 0.1, jnp.float32)
  x = jnp.asarray(rng.randn(n, d), jnp.float32)
  y = jnp.asarray(rng.randint(0, v, (n, 1)))
  z = x @ w.T + b[None, :]
  full = float(jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y, -1)[:, 0]))
  f = jax.jit(lambda k, s: jbs.sampled_softmax_loss(w, b, y, x, s, v, key=k), static_argnums=1)
  errs = []
  for s in (10, 50, 200, 399):
    keys = jax.random.split(jax.random.key(0), 8)
    est = np.mean([float(jnp.mean(f(k, s))) for k in keys])
    errs.append(abs(est - full))
  assert errs[-1] < 0.02 * full, (errs, full)
  assert errs[-1] < errs[1] < errs[0], errs


# ----------------------------------------------------------------------------- transforms


def _problem(seed=0, n=8, d=6, v=30, t=2):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(v, d) * 0.5, jnp.float32), jnp.asarray(rng.randn(v) * 0.1,
                                                                        jnp.float32),
          jnp.asarray(rng.randint(0, v, (n, t))), jnp.asarray(rng.randn(n, d), jnp.float32))


def test_determinism_for_fixed_key_and_differs_across_keys():
  w, b, y, x = _problem()
  f = jax.jit(lambda k: jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, key=k))
  a, a2 = f(jax.random.key(1)), f(jax.random.key(1))
  np.testing.assert_array_equal(a, a2)
  assert not np.allclose(a, f(jax.random.key(2)))


def test_vmap_over_batch_equals_loop():
  w, b, y, x = _problem()
  sv = jbs.log_uniform_candidate_sampler(jax.random.key(0), y, 2, 8, True, 30)
  one = lambda yy, xx, tq: jbs.sampled_softmax_loss(w, b, yy[None], xx[None], 8, 30, 2,
                                                     (sv[0], tq[None], sv[2]))[0]
  got = jax.jit(jax.vmap(one))(y, x, sv[1])
  want = jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, sv)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # vmap over keys: one sample set per key
  keys = jax.random.split(jax.random.key(0), 3)
  f = lambda k: jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, key=k)
  many = jax.jit(jax.vmap(f))(keys)
  np.testing.assert_allclose(many[1], jax.jit(f)(keys[1]), rtol=1e-6)


def test_check_grads_and_finite_under_hits():
  w, b, y, x = _problem(n=4, d=3, v=12)
  sv = (jnp.array([0, 1, 2, 3, 4, 5]), jnp.full((4, 2), 0.5), jnp.full((6,), 0.5))
  y = y.at[:, 0].set(jnp.array([0, 1, 2, 3]))  # every row has a hit
  f = jax.jit(lambda w, b, x: jnp.sum(jbs.sampled_softmax_loss(w, b, y, x, 6, 12, 2, sv) ** 2))
  with jax.enable_x64(True):
    args = tuple(a.astype(jnp.float64) for a in (w, b, x))
    check_grads(f, args, order=1, modes=("rev",))
  g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(w * 100, b, x * 100)  # extreme logits
  assert all(np.isfinite(np.asarray(a)).all() for a in g)


def test_only_true_and_sampled_rows_get_gradient():
  w, b, y, x = _problem()
  sv = jbs.log_uniform_candidate_sampler(jax.random.key(0), y, 2, 8, True, 30)
  gw = jax.jit(jax.grad(lambda w: jnp.sum(jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2,
                                                                    sv))))(w)
  touched = set(np.asarray(y).ravel().tolist()) | set(np.asarray(sv[0]).tolist())
  nonzero = set(np.flatnonzero(np.abs(np.asarray(gw)).sum(1)).tolist())
  assert nonzero <= touched and nonzero


@pytest.mark.slow
def test_sharded_jit_equals_single_device():
  devs = np.array(jax.devices()[:8])
  mesh = Mesh(devs, ("data",))
  w, b, y, x = _problem(n=16)
  key = jax.random.key(7)
  f = jax.jit(lambda w, b, y, x, k: jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, key=k))
  want = f(w, b, y, x, key)
  xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  ys = jax.device_put(y, NamedSharding(mesh, P("data", None)))
  got = f(w, b, ys, xs, key)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  g = jax.jit(jax.grad(lambda w, y, x: jnp.sum(f(w, b, y, x, key))))
  g1, g2 = g(w, y, x), g(w, ys, xs)
  np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-6)


def test_leading_dims_and_bf16():
  w, b, y, x = _problem(n=6)
  key = jax.random.key(0)
  f = jax.jit(lambda w, b, y, x: jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, key=key))
  flat = f(w, b, y, x)
  nd = f(w, b, y.reshape(2, 3, 2), x.reshape(2, 3, 6))
  np.testing.assert_allclose(nd.reshape(-1), flat, rtol=1e-6)
  lo = f(w.astype(jnp.bfloat16), b.astype(jnp.bfloat16), y, x.astype(jnp.bfloat16))
  assert lo.dtype == jnp.float32
  np.testing.assert_allclose(lo, flat, rtol=5e-2)


# ----------------------------------------------------------------------------- errors


def test_errors():
  w, b, y, x = _problem()
  k = jax.random.key(0)
  with pytest.raises(ValueError, match="key"):
    jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2)
  with pytest.raises(ValueError, match="num_sampled must be < num_classes"):
    jbs.sampled_softmax_loss(w, b, y, x, 30, 30, 2, key=k)
  with pytest.raises(ValueError, match=r"labels must have shape \(8, 1\)"):
    jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 1, key=k)
  with pytest.raises(ValueError, match="labels must lie in"):
    jbs.sampled_softmax_loss(w, b, y.at[0, 0].set(30), x, 8, 30, 2, key=k)
  with pytest.raises(ValueError, match=r"sampled_values\[0\] must have shape"):
    jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, (jnp.arange(7), jnp.ones((8, 2)),
                                                     jnp.ones(8)))
  with pytest.raises(ValueError, match=r"sampled_values\[1\] must have shape"):
    jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, (jnp.arange(8), jnp.ones((8, 1)),
                                                     jnp.ones(8)))
  with pytest.raises(ValueError, match="num_classes must be <="):
    jbs.sampled_softmax_loss(w, b, y, x, 8, 31, 2, key=k)
  with pytest.raises(TypeError, match="labels must be an integer"):
    jbs.sampled_softmax_loss(w, b, y.astype(jnp.float32), x, 8, 30, 2, key=k)
  lg = x @ w.T
  with pytest.raises(ValueError, match="num_samples must be < the number of classes"):
    jbs.sampled_softmax_with_cross_entropy(lg, y, 30, 2)
  with pytest.raises(ValueError, match=r"label must have shape \(8, 3\)"):
    jbs.sampled_softmax_with_cross_entropy(lg, y, 5, 3)
  with pytest.raises(ValueError, match="customized_samples and customized_probabilities"):
    jbs.sampled_softmax_with_cross_entropy(lg, y, 5, 2, use_customized_samples=True)
  with pytest.raises(ValueError, match=r"customized_samples must have shape \(8, 7\)"):
    jbs.sampled_softmax_with_cross_entropy(lg, y, 5, 2, True, True, jnp.zeros((8, 6), int),
                                           jnp.ones((8, 7)))
  with pytest.raises(ValueError, match=r"customized_probabilities must have shape \(8, 7\)"):
    jbs.sampled_softmax_with_cross_entropy(lg, y, 5, 2, True, True, jnp.zeros((8, 7), int),
                                           jnp.ones((8, 6)))


def test_out_of_range_labels_nan_under_jit_and_checkify():
  w, b, y, x = _problem()
  bad = y.at[3, 1].set(30)
  loss = lambda y: jbs.sampled_softmax_loss(w, b, y, x, 8, 30, 2, key=jax.random.key(0))
  out = np.asarray(jax.jit(loss)(bad))
  assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()
  err, _ = jax.jit(jbs.checked(loss))(bad)
  with pytest.raises(Exception, match="labels must lie in"):
    err.throw()
  g = jax.jit(lambda s: jbs.sampled_softmax_with_cross_entropy(
      x @ w.T, y, 5, 2, True, True, s, jnp.ones((8, 7))))
  smp = jnp.zeros((8, 7), jnp.int32).at[2, 4].set(-1)
  out = np.asarray(g(smp))
  assert np.isnan(out[2, 0]) and np.isfinite(np.delete(out, 2)).all()
