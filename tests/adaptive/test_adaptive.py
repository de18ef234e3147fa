"""Adaptive softmax: parity with torch / Paddle fixtures, static-shape blocks,
transforms, masking, validation and the cutoff helpers."""
import functools
import itertools
import os

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jax_bigsoftmax as jbs
from jax_bigsoftmax import interop
from helpers import FIXTURES

TORCH = np.load(os.path.join(FIXTURES, "adaptive_torch.npz"))
PADDLE = np.load(os.path.join(FIXTURES, "adaptive_paddle.npz"))
TORCH_CASES = sorted({k.split("/")[0] for k in TORCH.files if "/" in k})


def _sub(f, prefix):
  return {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}


def _module(f, case, **kw):
  d, v, div, hb = f[f"{case}/config"]
  return jbs.AdaptiveLogSoftmaxWithLoss(
      int(d), int(v), tuple(f[f"{case}/cutoffs"].tolist()), div_value=float(div),
      head_bias=bool(hb), **kw)


def _random_setup(seed=0, d=8, bounds=(5, 20, 60), n=37, bias=True, dtype=np.float32):
  rng = np.random.default_rng(seed)
  hsz = [max(1, d // 2 ** (i + 1)) for i in range(len(bounds) - 1)]
  head = rng.normal(size=(d, bounds[0] + len(hsz))).astype(dtype)
  tails = [(rng.normal(size=(d, h)).astype(dtype),
            rng.normal(size=(h, bounds[i + 1] - bounds[i])).astype(dtype))
           for i, h in enumerate(hsz)]
  b = rng.normal(size=(head.shape[1],)).astype(dtype) if bias else None
  x = rng.normal(size=(n, d)).astype(dtype)
  y = rng.integers(0, bounds[-1], n)
  return x, y, head, tails, list(bounds), b


def _naive(x, y, head, tails, bounds, b):
  """Independent NumPy loop over examples (float64)."""
  def lsm(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())
  out = []
  for xi, yi in zip(np.asarray(x, np.float64), y):
    hl = xi @ head + (0 if b is None else b)
    hlp = lsm(hl)
    if yi < bounds[0]:
      out.append(hlp[yi])
      continue
    i = int(np.searchsorted(bounds, yi, side="right")) - 1
    z = (xi @ tails[i][0]) @ tails[i][1]
    out.append(hlp[bounds[0] + i] + lsm(z)[yi - bounds[i]])
  return np.array(out)


# ----------------------------------------------------------------------------
# Parity with torch.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_parity(case):
  m = _module(TORCH, case)
  params = interop.adaptive_params_from_torch(_sub(TORCH, f"{case}/sd/"))
  x, y = TORCH[f"{case}/x"], TORCH[f"{case}/y"]
  tol = dict(rtol=1e-5, atol=1e-4 if case == "large_inputs" else 1e-5)

  @jax.jit
  def everything(p, x):
    loss_fn = lambda p, x: m.apply({"params": p}, x, y).loss
    res = m.apply({"params": p}, x, y)
    gp, gx = jax.grad(loss_fn, argnums=(0, 1))(p, x)
    x2 = x.reshape(-1, x.shape[-1])
    lp = m.apply({"params": p}, x2, method="log_prob")
    pred = m.apply({"params": p}, x2, method="predict")
    return res, lp, pred, gp, gx

  res, lp, pred, gp, gx = everything(params, x)
  assert isinstance(res, jbs.ASMOutput)
  np.testing.assert_allclose(res.output, TORCH[f"{case}/output"], **tol)
  np.testing.assert_allclose(res.loss, TORCH[f"{case}/loss"], **tol)
  np.testing.assert_allclose(lp, TORCH[f"{case}/log_prob"], **tol)
  np.testing.assert_array_equal(pred, TORCH[f"{case}/predict"])
  want = {k: np.zeros_like(v) for k, v in _sub(TORCH, f"{case}/sd/").items()}
  want.update(_sub(TORCH, f"{case}/grad/"))
  np.testing.assert_allclose(gx, want.pop("x"), rtol=1e-4, atol=1e-5)
  want = interop.adaptive_params_from_torch(want)
  assert set(want) == set(gp)
  for k in want:
    np.testing.assert_allclose(gp[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_torch_fixture_cases_cover_the_issue():
  cut = lambda c: TORCH[f"{c}/cutoffs"]
  y = lambda c: np.atleast_1d(TORCH[f"{c}/y"])
  # some clusters empty
  cl = np.searchsorted(cut("empty_clusters"), y("empty_clusters"), side="right")
  assert set(cl) == {0, 3}
  # all targets in one tail
  assert set(np.searchsorted(cut("one_tail"), y("one_tail"), side="right")) == {2}
  assert TORCH["single_row/x"].shape[0] == 1 and TORCH["scalar_target/y"].ndim == 0
  assert np.abs(TORCH["large_inputs/x"]).max() > 100
  assert any((TORCH[f"{c}/predict"] >= cut(c)[0]).any() for c in TORCH_CASES)


# ----------------------------------------------------------------------------
# Parity with Paddle (its docstring examples).
# ----------------------------------------------------------------------------


def test_paddle_functional_doc_example():
  p = "doc_functional/"
  f = PADDLE
  out, loss = jax.jit(
      lambda x, y, w, t, b: jbs.adaptive_log_softmax_with_loss(x, y, w, t, [2], b)
  )(f[p + "x"], f[p + "y"], f[p + "head_weight"],
    [(f[p + "tail_0_0"], f[p + "tail_0_1"])], f[p + "head_bias"])
  np.testing.assert_allclose(out, f[p + "output"], rtol=1e-6)
  np.testing.assert_allclose(loss, f[p + "loss"], rtol=1e-6)
  # The numbers printed in Paddle's docstring.
  np.testing.assert_allclose(out, [-0.99842924, -2.27753878, -0.16740258], rtol=1e-6)
  np.testing.assert_allclose(loss, 1.14779019, rtol=1e-6)


@pytest.mark.parametrize("case", ["doc_layer", "multi"])
def test_paddle_layer(case):
  f = PADDLE
  sd = _sub(f, f"{case}/sd/")
  params = interop.adaptive_params_from_paddle(sd)
  m = _module(f, case)
  x, y = f[f"{case}/x"], f[f"{case}/y"]
  @jax.jit
  def everything(p, x):
    res = m.apply({"params": p}, x, y)
    lp = m.apply({"params": p}, x, method="log_prob")
    pred = m.apply({"params": p}, x, method="predict")
    grads = jax.grad(lambda p, x: m.apply({"params": p}, x, y).loss, argnums=(0, 1))(p, x)
    return res, lp, pred, grads

  res, lp, pred, (gp, gx) = everything(params, x)
  np.testing.assert_allclose(res.output, f[f"{case}/output"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.loss, f[f"{case}/loss"], rtol=1e-5)
  np.testing.assert_allclose(lp, f[f"{case}/log_prob"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(pred, f[f"{case}/predict"].astype(int))
  if case == "doc_layer":  # the numbers printed in Paddle's docstring
    np.testing.assert_allclose(res.output, [-1.04691017, -0.42341536, -1.16909981], rtol=1e-6)
    np.testing.assert_allclose(res.loss, 0.87980843, rtol=1e-6)
    np.testing.assert_allclose(lp, [[-1.13710010, -1.04691017, -1.11403584],
                                    [-1.51841831, -0.42341536, -2.07040048],
                                    [-4.25405550, -1.16909981, -0.39282480]], rtol=1e-6)
    np.testing.assert_array_equal(pred, [1, 1, 2])
  np.testing.assert_allclose(gx, f[f"{case}/grad/x"], rtol=1e-4, atol=1e-6)
  want = {k: np.zeros_like(v) for k, v in sd.items()}
  want.update({k: v for k, v in _sub(f, f"{case}/grad/").items() if k != "x"})
  want = interop.adaptive_params_from_paddle(want)
  for k in want:
    np.testing.assert_allclose(gp[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------
# Static-shape blocks: every capacity is exact.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("bounds",))
def _dense_loss_grad(x, y, h, t, b, bounds):
  dense = lambda x, h, t, b: -jnp.mean(jnp.take_along_axis(
      jbs.adaptive_log_prob(x, h, t, bounds, b), y[:, None], -1))
  return jax.grad(dense, argnums=(0, 1, 2, 3))(x, h, t, b)


@pytest.mark.parametrize("capacity", [None, 1, [2, 40]])
def test_any_capacity_is_exact(capacity):
  x, y, head, tails, bounds, b = _random_setup(n=53)
  def loss(x, y, h, t, b):
    return jbs.adaptive_log_softmax_with_loss(x, y, h, t, bounds, b, capacity=capacity)

  @jax.jit
  def f(x, y, h, t, b):
    grads = jax.grad(lambda *a: loss(a[0], y, *a[1:])[1], argnums=(0, 1, 2, 3))(x, h, t, b)
    return loss(x, y, h, t, b), grads

  rng = np.random.default_rng(1)
  for ys in (y, rng.integers(20, 60, 53), y % 5):  # mixed / all in tail 1 / head only
    (out, total), g = f(x, ys, head, tails, b)
    np.testing.assert_allclose(out, _naive(x, ys, head, tails, bounds, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(total, -out.mean(), rtol=1e-6)
    g_ref = _dense_loss_grad(x, ys, head, tails, b, tuple(bounds))
    for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)


def test_empty_cluster_gets_zero_gradient_and_no_work():
  x, y, head, tails, bounds, b = _random_setup()
  y = y % 20  # tail 1 ([20, 60)) is empty
  g = jax.grad(lambda t: jbs.adaptive_log_softmax_with_loss(x, y, head, t, bounds, b)[1])(tails)
  assert not np.any(g[1][0]) and not np.any(g[1][1])
  # No dot in the jaxpr may have the whole batch as rows for a tail: the tails
  # only ever see gathered blocks.
  y512 = np.resize(y, 512)
  jaxpr = jax.make_jaxpr(jax.grad(lambda x: jbs.adaptive_log_softmax_with_loss(
      x, y512, head, tails, bounds, b, capacity=8)[1]))(np.zeros((512, 8), np.float32))
  text = str(jaxpr)
  assert "while" in text and "f32[8,40]" in text
  assert "f32[512,40]" not in text and "f32[512,15]" not in text


def test_predict_matches_argmax_for_any_capacity():
  x, _, head, tails, bounds, b = _random_setup(n=70)
  head = head.copy()
  head[:, 5:] *= 3  # cluster tokens often win the head
  want = np.argmax(jbs.adaptive_log_prob(x, head, tails, bounds, b), -1)
  first = np.argmax(x @ head + b, -1)
  assert (first >= 5).any() and (first < 5).any()
  for cap in (None, 1, 16):
    got = jax.jit(lambda x: jbs.adaptive_predict(x, head, tails, bounds, b, capacity=cap))(x)
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------
# Properties.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("capacity",))
def _all_three(x, y, head, tails, b, capacity):
  bounds = [4, 10, 25, 40]
  lp = jbs.adaptive_log_prob(x, head, tails, bounds, b)
  out, _ = jbs.adaptive_log_softmax_with_loss(x, y, head, tails, bounds, b, capacity=capacity)
  return lp, out, jbs.adaptive_predict(x, head, tails, bounds, b, capacity=capacity)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    capacity=st.sampled_from([None, 4]),
    n_active=st.integers(1, 24),
)
def test_properties(seed, scale, capacity, n_active):
  x, y, head, tails, bounds, b = _random_setup(seed, bounds=(4, 10, 25, 40), n=24)
  head = head * scale
  y[n_active:] = y[0]  # vary how many clusters are hit
  lp, out, pred = _all_three(x, y, head, tails, b, capacity)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out, np.take_along_axis(lp, y[:, None], -1)[:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(pred, np.argmax(lp, -1))


def test_head_only_and_single_example():
  x, y, head, _, _, b = _random_setup(n=5, bounds=(6,))
  out, loss = jbs.adaptive_log_softmax_with_loss(x, y, head, [], [6], b)
  np.testing.assert_allclose(out, jax.nn.log_softmax(x @ head + b)[np.arange(5), y], rtol=1e-5)
  np.testing.assert_array_equal(jbs.adaptive_predict(x, head, [], [6], b), np.argmax(x @ head + b, -1))
  x, y, head, tails, bounds, b = _random_setup(n=1)
  o0, l0 = jbs.adaptive_log_softmax_with_loss(x[0], y[0], head, tails, bounds, b)
  assert o0.shape == () and l0.shape == ()
  np.testing.assert_allclose(o0, _naive(x, y, head, tails, bounds, b)[0], rtol=1e-5)



def test_empty_batch_like_torch():
  """N=0: output [] and loss NaN (torch's mean of nothing), log_prob [0, V], predict [0]."""
  _, _, head, tails, bounds, b = _random_setup(n=1)
  x, y = jnp.zeros((0, head.shape[0])), jnp.zeros((0,), jnp.int32)
  out, loss = jax.jit(lambda x: jbs.adaptive_log_softmax_with_loss(x, y, head, tails, bounds, b))(x)
  assert out.shape == (0,) and np.isnan(loss)
  assert jbs.adaptive_log_prob(x, head, tails, bounds, b).shape == (0, bounds[-1])
  assert jbs.adaptive_predict(x, head, tails, bounds, b).shape == (0,)
  g = jax.grad(lambda t: jnp.sum(jbs.adaptive_log_softmax_with_loss(x, y, head, t, bounds, b)[0]))(
      tails)
  assert all(float(jnp.abs(a).sum()) == 0 for a in jax.tree.leaves(g))

# ----------------------------------------------------------------------------
# Transforms.
# ----------------------------------------------------------------------------


def test_leading_batch_dims_and_vmap():
  x, y, head, tails, bounds, b = _random_setup(n=24)
  fn = lambda x, y, cap=None: jbs.adaptive_log_softmax_with_loss(
      x, y, head, tails, bounds, b, capacity=cap)

  @jax.jit
  def batched(x3, y3):
    x6, y6 = x3.reshape(6, 4, 8), y3.reshape(6, 4)
    return dict(
        main=fn(x3, y3),
        lp=jbs.adaptive_log_prob(x3, head, tails, bounds, b),
        pred=jbs.adaptive_predict(x3, head, tails, bounds, b),
        vm=jax.vmap(lambda x, y: fn(x, y, 2))(x6, y6),
        gv=jax.vmap(jax.grad(lambda x, y: fn(x, y, 3)[1]))(x6, y6),
        pv=jax.vmap(lambda x: jbs.adaptive_predict(x, head, tails, bounds, b, capacity=2))(x6),
    )

  r = batched(x.reshape(2, 3, 4, 8), y.reshape(2, 3, 4))
  out, loss = fn(x, y)
  assert r["main"][0].shape == (2, 3, 4) and r["lp"].shape == (2, 3, 4, 60)
  np.testing.assert_allclose(r["main"][0].reshape(-1), out, rtol=1e-6)
  np.testing.assert_allclose(r["main"][1], loss, rtol=1e-6)
  np.testing.assert_allclose(r["vm"][0].reshape(-1), out, rtol=1e-5)
  np.testing.assert_allclose(r["vm"][1], -out.reshape(6, 4).mean(-1), rtol=1e-5)
  g = jax.grad(lambda x: fn(x, y)[1])(x)
  np.testing.assert_allclose(r["gv"].reshape(-1, 8) / 6, g, rtol=1e-4, atol=1e-6)
  want = np.argmax(jbs.adaptive_log_prob(x, head, tails, bounds, b), -1)
  np.testing.assert_array_equal(r["pred"].reshape(-1), want)
  np.testing.assert_array_equal(r["pv"].reshape(-1), want)


def test_check_grads_float64():
  with jax.enable_x64(True):
    x, y, head, tails, bounds, b = _random_setup(n=9, dtype=np.float64)
    f = lambda x, h, t, b: jbs.adaptive_log_softmax_with_loss(
        x, y, h, t, bounds, b, capacity=2)[0]
    check_grads(f, (x, head, tails, b), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_sharded_jit_matches_single_device():
  devs = np.array(jax.devices()[:8])
  assert len(devs) == 8
  mesh = Mesh(devs, ("data",))
  x, y, head, tails, bounds, b = _random_setup(n=64)
  f = jax.jit(jax.value_and_grad(
      lambda x, h: jbs.adaptive_log_softmax_with_loss(x, y, h, tails, bounds, b)[1],
      argnums=(0, 1)))
  want = f(x, head)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  got = f(xs, head)
  for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Masks, dtypes, bad labels.
# ----------------------------------------------------------------------------


def test_nll_ignore_index_and_mask():
  m = jbs.AdaptiveLogSoftmaxWithLoss(8, 60, (5, 20), div_value=2.0, head_bias=True)
  x, y, *_ = _random_setup(n=12)
  params = jax.jit(m.init)(jax.random.PRNGKey(0), x, y)
  y_pad = y.copy()
  y_pad[[1, 4, 7]] = -100
  mask = np.arange(12) % 3 != 0
  p = params["params"]

  @jax.jit
  def run(params, x):
    return dict(
        nll=m.apply(params, x, y_pad, method="nll"),
        full=-m.apply(params, x, y).output,
        nll_m=m.apply(params, x.reshape(3, 4, 8), y.reshape(3, 4), mask=mask.reshape(3, 4),
                      method="nll"),
        g=jax.grad(lambda x: m.apply(params, x, y_pad, method="nll").sum())(x),
        fn=jbs.adaptive_log_softmax_with_loss(
            x, y_pad, p["head_weight"],
            [(p[f"tail_{i}_proj"], p[f"tail_{i}_out"]) for i in range(2)],
            [5, 20, 60], p["head_bias"], ignore_index=-100),
    )

  r = run(params, x)
  keep = y_pad != -100
  np.testing.assert_allclose(r["nll"][keep], r["full"][keep], rtol=1e-6)
  assert np.all(r["nll"][~keep] == 0)
  np.testing.assert_allclose(r["nll_m"].reshape(-1), np.where(mask, r["full"], 0), rtol=1e-6)
  assert np.all(np.isfinite(r["g"])) and not np.any(r["g"][~keep])
  # functional ignore_index: mean over the kept rows only
  np.testing.assert_allclose(r["fn"][1], r["full"][keep].mean(), rtol=1e-6)


def test_bfloat16_inputs_reduce_in_float32():
  x, y, head, tails, bounds, b = _random_setup(n=20)
  cast = lambda a: jax.tree.map(lambda v: jnp.asarray(v, jnp.bfloat16), a)

  @jax.jit
  def run(x, h, t, b):
    loss = lambda x: jbs.adaptive_log_softmax_with_loss(x, y, h, t, bounds, b)
    return loss(x), jbs.adaptive_log_prob(x, h, t, bounds, b), jax.grad(lambda x: loss(x)[1])(x)

  (out, loss), lp, g = run(cast(x), cast(head), cast(tails), cast(b))
  assert out.dtype == jnp.float32 and loss.dtype == jnp.float32 and lp.dtype == jnp.float32
  ref = _naive(x, y, head, tails, bounds, b)
  np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.3)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_extreme_inputs_give_finite_values_and_grads():
  x, y, head, tails, bounds, b = _random_setup(n=16)
  x = x * 1e3
  val, g = jax.value_and_grad(lambda x: jbs.adaptive_log_softmax_with_loss(
      x, y, head, tails, bounds, b)[1])(x)
  assert np.isfinite(val) and np.all(np.isfinite(g))


def test_out_of_range_labels():
  x, y, head, tails, bounds, b = _random_setup(n=6)
  bad = y.copy()
  bad[2] = 60
  with pytest.raises(ValueError, match=r"label must lie in \[0, 60\)"):
    jbs.adaptive_log_softmax_with_loss(x, bad, head, tails, bounds, b)
  g = lambda y: jbs.adaptive_log_softmax_with_loss(x, y, head, tails, bounds, b)
  f = jax.jit(g)
  out, loss = f(bad)
  assert np.isnan(out[2]) and np.isnan(loss) and np.all(np.isfinite(np.delete(out, 2)))
  bad[2] = -3
  assert np.isnan(f(bad)[0][2])
  err, _ = jax.jit(jbs.checked(g))(bad)
  with pytest.raises(Exception, match="label must lie in"):
    err.throw()


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("cutoffs, msg", [
    ([], "length larger than 0"),
    ([10, 5], "sorted in an increasing order"),
    ([5, 5], "unique"),
    ([0, 5], "positive"),
    ([5, 50], "n_classes-1=49"),
    ([2.5], "integers"),
])
def test_module_cutoff_validation(cutoffs, msg):
  m = jbs.AdaptiveLogSoftmaxWithLoss(16, 50, cutoffs)
  with pytest.raises(ValueError, match=msg):
    m.init(jax.random.PRNGKey(0), jnp.zeros((2, 16)), jnp.zeros((2,), int))


def test_module_hidden_size_validation():
  m = jbs.AdaptiveLogSoftmaxWithLoss(8, 100, (5, 20, 50), div_value=4.0)
  with pytest.raises(ValueError, match=r"tail cluster 1 .* = 0; it must be >= 1"):
    m.init(jax.random.PRNGKey(0), jnp.zeros((2, 8)), jnp.zeros((2,), int))


def test_module_params_layout_and_input_checks():
  m = jbs.AdaptiveLogSoftmaxWithLoss(16, 50, (5, 20), div_value=2.0, head_bias=True)
  p = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((2, 16)), jnp.zeros((2,), int))["params"]
  assert {k: v.shape for k, v in p.items()} == {
      "head_weight": (16, 7), "head_bias": (7,), "tail_0_proj": (16, 8),
      "tail_0_out": (8, 15), "tail_1_proj": (16, 4), "tail_1_out": (4, 30)}
  assert np.abs(p["head_weight"]).max() <= 0.25  # torch's U(+-1/sqrt(16))
  with pytest.raises(ValueError, match=r"label must have shape \(3,\)"):
    m.apply({"params": p}, jnp.zeros((3, 16)), jnp.zeros((4,), int))
  with pytest.raises(ValueError, match=r"label must have shape \(3,\)"):
    m.apply({"params": p}, jnp.zeros((3, 16)), jnp.zeros((3, 1), int))
  with pytest.raises(ValueError, match=r"head_weight must have shape \(12, 7\)"):
    m.apply({"params": p}, jnp.zeros((3, 12)), jnp.zeros((3,), int))
  with pytest.raises(TypeError, match="label must be an integer"):
    m.apply({"params": p}, jnp.zeros((3, 16)), jnp.zeros((3,)))


def test_functional_validation():
  x, y, head, tails, bounds, b = _random_setup(n=4)
  f = jbs.adaptive_log_softmax_with_loss
  with pytest.raises(ValueError, match=r"cutoffs must be the 3 cluster boundaries"):
    f(x, y, head, tails, [5], b)
  with pytest.raises(ValueError, match="sorted"):
    f(x, y, head, tails, [5, 3, 60], b)
  with pytest.raises(ValueError, match=r"tail_weights\[1\]\[1\] must have shape \(2, 40\)"):
    f(x, y, head, [tails[0], (tails[1][0], tails[1][1][:, :30])], bounds, b)
  with pytest.raises(ValueError, match=r"head_bias must have shape \(7,\)"):
    f(x, y, head, tails, bounds, b[:3])
  with pytest.raises(ValueError, match="tail_weights\\[0\\] must be a pair"):
    f(x, y, head, [tails[0][0], tails[1]], bounds, b)
  with pytest.raises(ValueError, match="capacity must be a positive int"):
    f(x, y, head, tails, bounds, b, capacity=0)
  with pytest.raises(TypeError, match="input must be a floating"):
    f(y, y, head, tails, bounds, b)
  # torch's form (no n_classes) is accepted: n_classes inferred from the tail.
  np.testing.assert_allclose(f(x, y, head, tails, [5, 20], b)[0], f(x, y, head, tails, bounds, b)[0])


def test_interop_errors_and_paddle_forms():
  sd = _sub(PADDLE, "multi/sd/")
  p1 = interop.adaptive_params_from_paddle({"asm." + k: v for k, v in sd.items()}, prefix="asm.")
  nested = {"head_weight": sd["head_weight"], "head_bias": sd["head_bias"],
            "tail_weights": [[sd[f"tail_weights.{i}.0"], sd[f"tail_weights.{i}.1"]] for i in range(3)]}
  p2 = interop.adaptive_params_from_paddle(nested)
  for k in p1:
    np.testing.assert_array_equal(p1[k], p2[k])
  with pytest.raises(ValueError, match="no entry 'head.weight'"):
    interop.adaptive_params_from_torch({"weight": np.zeros((3, 3))})
  with pytest.raises(TypeError, match="state_dict must be a mapping"):
    interop.adaptive_params_from_torch([1, 2])
  bad = dict(_sub(TORCH, "basic/sd/"))
  bad["tail.1.0.weight"] = np.zeros((2, 5), np.float32)
  with pytest.raises(ValueError, match="do not chain"):
    interop.adaptive_params_from_torch(bad)


# ----------------------------------------------------------------------------
# Helpers: frequency_sort, suggest_cutoffs.
# ----------------------------------------------------------------------------


def test_frequency_sort():
  counts = np.array([3, 10, 0, 10, 7])
  old_to_new, new_to_old = jbs.frequency_sort(counts)
  assert new_to_old.tolist() == [1, 3, 4, 0, 2]
  np.testing.assert_array_equal(old_to_new[new_to_old], np.arange(5))
  assert np.all(np.diff(counts[new_to_old]) <= 0)
  with pytest.raises(ValueError, match="non-negative"):
    jbs.frequency_sort([1, -1])
  with pytest.raises(ValueError, match="1-D"):
    jbs.frequency_sort(np.ones((2, 2)))


def test_suggest_cutoffs_is_optimal_on_its_grid():
  v = 90
  counts = 1.0 / np.arange(1, v + 1)
  kw = dict(in_features=64, div_value=2.0, batch_size=256, matmul_overhead=1e3)
  got = jbs.suggest_cutoffs(counts, n_clusters=2, n_candidates=400, **kw)
  assert len(got) == 2 and 0 < got[0] < got[1] < v
  brute = min(itertools.combinations(range(1, v), 2),
              key=lambda c: jbs.adaptive_cost(counts, list(c), **kw))
  np.testing.assert_allclose(jbs.adaptive_cost(counts, got, **kw),
                             jbs.adaptive_cost(counts, list(brute), **kw), rtol=1e-9)
  auto = jbs.suggest_cutoffs(counts, **kw)
  assert jbs.adaptive_cost(counts, auto, **kw) <= jbs.adaptive_cost(counts, got, **kw) + 1e-6
  jbs.adaptive._head.adaptive_cutoffs(64, v, auto, 2.0)  # valid for the module
  with pytest.raises(ValueError, match="n_clusters must be an int in"):
    jbs.suggest_cutoffs(counts, in_features=4, div_value=4.0, n_clusters=2)
