"""Exact losses: torch parity (fixtures made by torch), linear_cross_entropy == dense,
transforms (jit, vmap, grad, sharded), errors, and the FullSoftmaxLoss head."""
import json
import os

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import helpers
import jax_bigsoftmax as jbs
from helpers import FIXTURES

_FIX = np.load(os.path.join(FIXTURES, "exact_torch.npz"))
_CASES = json.loads(str(_FIX["cases"]))


def _case(i):
  c = _CASES[i]
  arrays = {k: _FIX[f"c{i}_{k}"] for k in c["arrays"]}
  grads = {k: _FIX[f"c{i}_grad_{k}"] for k in c["grads"]}
  return c["kind"], c["opts"], arrays, _FIX[f"c{i}_out"], grads


def _ours(kind, opts, arrays):
  """(function of the differentiable arrays, their names) for one fixture case."""
  labels = jnp.asarray(arrays["labels"], jnp.int32) if "labels" in arrays else None
  if kind == "linear_cross_entropy":
    names = ["inputs", "weight"] + (["bias"] if "bias" in arrays else [])
    cw = arrays.get("class_weight")

    def f(*diff):
      kw = dict(zip(names, diff))
      return jbs.linear_cross_entropy(kw["inputs"], kw["weight"], labels, kw.get("bias"),
                                      class_weight=cw, chunk_size=100, **opts)
    return f, names
  name = "log_probs" if kind == "nll_loss" else "logits"
  fn = jbs.nll_loss if kind == "nll_loss" else jbs.cross_entropy
  if kind == "cross_entropy_prob":
    labels = jnp.asarray(arrays["targets"])

  def g(scores):
    return fn(scores, labels, weight=arrays.get("weight"), **opts)
  return g, [name]


# The fast tier checks the first case of each kind and every 8th case; the full tier all.
_FAST = ({min(i for i, c in enumerate(_CASES) if c["kind"] == k) for k in {c["kind"] for c in _CASES}}
         | set(range(0, len(_CASES), 8)))


@pytest.mark.parametrize("i", [i if i in _FAST else pytest.param(i, marks=pytest.mark.slow)
                               for i in range(len(_CASES))])
def test_torch_parity(i):
  kind, opts, arrays, expected, grads = _case(i)
  f, names = _ours(kind, opts, arrays)
  primals = [jnp.asarray(arrays[n]) for n in names]
  np.testing.assert_allclose(jax.jit(f)(*primals), expected, rtol=2e-5, atol=2e-6)
  if grads:  # gradients eagerly (op-by-op compiles are shared across cases: faster)
    _, vjp = jax.vjp(f, *primals)
    got = vjp(jnp.asarray(arrays["cot"]))
    for n, g in zip(names, got):
      # torch's gradient is NaN on a NaN row at an ignored position; ours is 0 there.
      finite = np.isfinite(grads[n])
      assert np.isfinite(g).all(), n
      np.testing.assert_allclose(np.where(finite, g, 0), np.where(finite, grads[n], 0),
                                 rtol=2e-4, atol=2e-6, err_msg=n)


def test_fixture_covers_torch_features():
  kinds = {(c["kind"], c["opts"]["reduction"], c["opts"].get("label_smoothing", 0.0) > 0,
            "weight" in c["arrays"]) for c in _CASES}
  for red in ("mean", "sum", "none"):
    for smooth in (False, True):
      for weighted in (False, True):
        assert ("cross_entropy", red, smooth, weighted) in kinds
  assert any(len(_FIX[f"c{i}_logits"].shape) == 4 for i, c in enumerate(_CASES)
             if c["kind"] == "cross_entropy")
  prob = {(c["opts"]["reduction"], c["opts"]["label_smoothing"] > 0, "weight" in c["arrays"])
          for c in _CASES if c["kind"] == "cross_entropy_prob"}
  assert len(prob) == 12
  edge = [_FIX[f"c{i}_logits"] for i, c in enumerate(_CASES) if c["kind"] == "cross_entropy"]
  assert any(np.isnan(a).any() for a in edge) and any(np.isneginf(a).any() for a in edge)


# --- linear_cross_entropy == dense cross_entropy --------------------------------------

def _problem(n=24, d=12, v=203, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), dtype)
  w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), dtype)
  b = jnp.asarray(rng.normal(size=(v,)), dtype)
  y = rng.integers(0, v, size=n)
  y[::5] = -100
  cw = jnp.asarray(rng.uniform(0.3, 2.0, size=v), dtype)
  return x, w, b, jnp.asarray(y, jnp.int32), cw


@pytest.mark.parametrize("chunk_size", helpers.tiered([1, 50, 64, 203, 1000, None], fast=(1, 5),
                                                      multi=False))
@pytest.mark.parametrize("smoothing,weighted,reduction",
                         [(0.0, False, "mean"), (0.15, True, "mean"), (0.3, False, "none"),
                          (0.0, True, "sum")])
def test_linear_matches_dense(chunk_size, smoothing, weighted, reduction):
  x, w, b, y, cw = _problem()
  cw = cw if weighted else None
  cot = jnp.asarray(np.random.default_rng(1).normal(size=y.shape if reduction == "none" else ()),
                    jnp.float32)

  def dense(x, w, b):
    return jbs.cross_entropy(x @ w.T + b[None], y, weight=cw, reduction=reduction,
                             label_smoothing=smoothing)

  def chunked(x, w, b):
    return jbs.linear_cross_entropy(x, w, y, b, class_weight=cw, reduction=reduction,
                                    label_smoothing=smoothing, chunk_size=chunk_size)

  o1, v1 = jax.vjp(dense, x, w, b)
  o2, v2 = jax.vjp(jax.jit(chunked), x, w, b)
  np.testing.assert_allclose(o2, o1, rtol=1e-5, atol=1e-6)
  for g1, g2, n in zip(v1(cot), v2(cot), "xwb"):
    np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-6, err_msg=n)


def test_linear_check_grads_float64():
  with jax.enable_x64(True):
    x, w, b, y, cw = _problem(n=6, d=4, v=13, dtype=np.float64)
    f = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, class_weight=cw,
                                                 label_smoothing=0.2, chunk_size=5)
    jax.test_util.check_grads(f, (x, w, b), order=1, modes=("rev",))


def _all_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, "shape", ()))
    for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
      yield from _all_shapes(sub)
    for p in eqn.params.values():
      inner = getattr(p, "jaxpr", None)
      if inner is not None:
        yield from _all_shapes(getattr(inner, "jaxpr", inner))


def test_linear_never_builds_full_logits():
  n, v = 64, 4096
  x, w, b, y, _ = _problem(n=n, d=8, v=v)
  for reduction in ("mean", "none"):
    loss = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, chunk_size=256,  # noqa: B023
                                                    reduction=reduction).sum()
    shapes = list(_all_shapes(jax.make_jaxpr(loss)(x, w, b).jaxpr))
    assert (n, 256) in shapes  # the forward walks [N, chunk] logits ...
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, w, b).jaxpr
    shapes = list(_all_shapes(jaxpr))
    if reduction == "mean":  # ... the one-pass gradient keeps blocks of 8 rows' logits,
      # chunk-major, as many elements as the walk's chunk
      assert (v // 256, 8, 256) in shapes and (8, 256) in shapes and (n, 256) not in shapes
    # ... [N, V] never
    assert all(int(np.prod(s)) < n * v for s in shapes if len(s) == 2 and s != (v, 8))
  dense = lambda x, w, b: jbs.cross_entropy(x @ w.T + b[None], y)
  assert (n, v) in list(_all_shapes(jax.make_jaxpr(jax.grad(dense))(x, w, b).jaxpr))


def test_linear_bf16_accumulates_in_float32():
  x, w, b, y, _ = _problem(n=32, d=16, v=300)
  ref = jbs.cross_entropy(x @ w.T + b[None], y)
  out = jbs.linear_cross_entropy(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), y,
                                 b.astype(jnp.bfloat16), chunk_size=64)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, rtol=3e-2)
  g = jax.grad(lambda w: jbs.linear_cross_entropy(x.astype(jnp.bfloat16), w, y, chunk_size=64))(
      w.astype(jnp.bfloat16))
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def test_linear_argmax_matches_dense():
  x, w, b, _, _ = _problem(n=40, v=517)
  for c in (1, 100, 517, None):
    np.testing.assert_array_equal(jbs.linear_argmax(x, w, b, chunk_size=c),
                                  jnp.argmax(x @ w.T + b[None], -1))


# --- transforms ------------------------------------------------------------------------

def test_vmap_and_leading_dims():
  x, w, b, y, _ = _problem(n=24)
  xb, yb = x.reshape(4, 6, -1), y.reshape(4, 6)
  per = jax.vmap(lambda xi, yi: jbs.linear_cross_entropy(xi, w, yi, b, reduction="sum",
                                                          chunk_size=37))(xb, yb)
  full = jbs.linear_cross_entropy(xb, w, yb, b, reduction="none", chunk_size=37)
  assert full.shape == (4, 6)
  np.testing.assert_allclose(per, full.sum(1), rtol=1e-5)
  logits = xb @ w.T + b[None, None]
  np.testing.assert_allclose(jax.vmap(lambda l, t: jbs.cross_entropy(l, t, reduction="sum"))(logits, yb),
                             jbs.cross_entropy(logits, yb, reduction="none").sum(1), rtol=1e-5)


def test_sharded_jit_equals_single_device():
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh = Mesh(devices, ("data",))
  x, w, b, y, cw = _problem(n=64)
  f = jax.jit(jax.value_and_grad(lambda x, w, b: jbs.linear_cross_entropy(
      x, w, y, b, class_weight=cw, label_smoothing=0.1, chunk_size=64), argnums=(0, 1, 2)))
  ref = f(x, w, b)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  got = f(xs, w, b)
  assert len(got[1][0].sharding.device_set) == 8
  for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7)


def test_pmap_cross_entropy_matches():
  x, w, b, y, _ = _problem(n=64)
  logits = (x @ w.T + b[None]).reshape(8, 8, -1)
  per_dev = jax.pmap(lambda l, t: jbs.cross_entropy(l, t, reduction="sum"))(logits, y.reshape(8, 8))
  np.testing.assert_allclose(per_dev.sum(), jbs.cross_entropy(logits.reshape(64, -1), y, reduction="sum"),
                             rtol=1e-5)


def test_masked_rows_and_extreme_logits_have_finite_grads():
  logits = jnp.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 3.0], [0.0, 0.0, 0.0]], jnp.float32)
  labels = jnp.array([1, -100, 2])
  g = jax.grad(lambda l: jbs.cross_entropy(l, labels, label_smoothing=0.1))(logits)
  assert bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_array_equal(g[1], 0.0)
  x = jnp.array([[1e3, 0.0], [0.0, 1e3]], jnp.float32)
  w = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], jnp.float32)
  grads = jax.grad(lambda x, w: jbs.linear_cross_entropy(x, w, jnp.array([1, -100]), chunk_size=2),
                   argnums=(0, 1))(x, w)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


# --- label range ---------------------------------------------------------------------

def test_out_of_range_labels():
  logits = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*\[7\]"):
    jbs.cross_entropy(logits, jnp.array([0, 7, 1]))
  with pytest.raises(ValueError, match="labels must lie"):
    jbs.linear_cross_entropy(jnp.ones((2, 3)), jnp.ones((5, 3)), jnp.array([-1, 0]))
  # under jit: NaN, never a plausible number
  assert np.isnan(jax.jit(jbs.cross_entropy)(logits, jnp.array([0, 7, 1])))
  assert np.isnan(jax.jit(jbs.nll_loss)(logits, jnp.array([0, 7, 1])))
  out = jax.jit(lambda x, y: jbs.linear_cross_entropy(x, jnp.ones((5, 3)), y, reduction="none"))(
      jnp.ones((2, 3)), jnp.array([9, 0]))
  assert np.isnan(out[0]) and np.isfinite(out[1])
  # checked(): the same error inside jit
  err, _ = jax.jit(jbs.checked(jbs.cross_entropy))(logits, jnp.array([0, 7, 1]))
  with pytest.raises(Exception, match="labels must lie in"):
    err.throw()
  err, _ = jax.jit(jbs.checked(jbs.cross_entropy))(logits, jnp.array([0, 3, -100]))
  err.throw()


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: jbs.cross_entropy(jnp.zeros((3, 4)), jnp.zeros((2,), jnp.int32)), ValueError,
     r"labels must have shape \(3,\).*got \(2,\)"),
    (lambda: jbs.cross_entropy(jnp.zeros((3, 4), jnp.int32), jnp.zeros((3,), jnp.int32)), TypeError,
     "logits must be a floating-point array"),
    (lambda: jbs.cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,))), TypeError,
     "labels must be an integer array"),
    (lambda: jbs.cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), reduction="avg"),
     ValueError, "reduction must be one of"),
    (lambda: jbs.cross_entropy(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), label_smoothing=1.5),
     ValueError, r"label_smoothing must be in \[0.0, 1.0\]; got 1.5"),
    (lambda: jbs.nll_loss(jnp.zeros((3, 4)), jnp.zeros((3,), jnp.int32), weight=jnp.ones(3)),
     ValueError, r"weight must have shape \(4,\)"),
    (lambda: jbs.nll_loss(jnp.zeros(()), jnp.zeros((), jnp.int32)), ValueError, "rank >= 1"),
    (lambda: jbs.linear_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((5, 6)), jnp.zeros(3, jnp.int32)),
     ValueError, r"weight must have shape \(\*, 4\).*got \(5, 6\)"),
    (lambda: jbs.linear_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros(3, jnp.int32),
                                      jnp.zeros(4)), ValueError, r"bias must have shape \(5,\)"),
    (lambda: jbs.linear_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros(3, jnp.int32),
                                      chunk_size=0), ValueError, "chunk_size must be a positive int"),
    (lambda: jbs.linear_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros(3, jnp.int32),
                                      class_weight=jnp.ones(4)), ValueError,
     r"class_weight must have shape \(5,\)"),
])
def test_errors(call, exc, pattern):
  with pytest.raises(exc, match=pattern):
    call()


# --- FullSoftmaxLoss head --------------------------------------------------------------

def _head(v=37, d=8, **kw):
  head = jbs.FullSoftmaxLoss(num_classes=v, features=d, chunk_size=10, **kw)
  x = jax.random.normal(jax.random.key(0), (3, 5, d))
  y = jax.random.randint(jax.random.key(1), (3, 5), 0, v)
  params = head.init(jax.random.key(2), x, y)
  return head, params, x, y


def test_full_head_interface():
  head, params, x, y = _head()
  assert params["params"]["weight"].shape == (37, 8) and params["params"]["bias"].shape == (37,)
  lp = head.apply(params, x, method=head.log_prob)
  assert lp.shape == (3, 5, 37)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  nll = head.apply(params, x, y, method=head.nll)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(lp, y[..., None], -1)[..., 0], rtol=1e-5)
  np.testing.assert_array_equal(head.apply(params, x, method=head.predict), jnp.argmax(lp, -1))
  np.testing.assert_allclose(head.apply(params, x, y), nll.mean(), rtol=1e-5)
  y_ign = y.at[0].set(-100)
  nll_ign = head.apply(params, x, y_ign, method=head.nll)
  np.testing.assert_array_equal(nll_ign[0], 0.0)
  np.testing.assert_allclose(head.apply(params, x, y_ign), nll_ign[1:].mean(), rtol=1e-5)


def test_full_head_rejects_tiny_vocab():
  with pytest.raises(ValueError, match="num_classes must be >= 2; got 1"):
    jbs.FullSoftmaxLoss(num_classes=1, features=4).init(jax.random.key(0), jnp.ones((1, 4)),
                                                        jnp.zeros((1,), jnp.int32))


_PROP_HEADS = {v: jbs.FullSoftmaxLoss(num_classes=v, features=5, chunk_size=7) for v in (2, 23)}


@jax.jit
def _head_outputs(params, x, y):
  head = _PROP_HEADS[params["params"]["bias"].shape[0]]
  return (head.apply(params, x, method=head.log_prob), head.apply(params, x, y, method=head.nll),
          head.apply(params, x, method=head.predict))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(v=st.sampled_from(sorted(_PROP_HEADS)), scale=st.floats(0.1, 30.0),
       seed=st.integers(0, 2**16))
def test_full_head_properties(v, scale, seed):
  # Shapes are fixed per vocabulary (one compile each); values vary.
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (9, 5)) * scale
  y = jax.random.randint(k2, (9,), 0, v)
  params = _PROP_HEADS[v].init(k3, x, y)
  lp, nll, pred = _head_outputs(params, x, y)
  np.testing.assert_allclose(jax.nn.logsumexp(lp, -1), 0.0, atol=1e-4)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(lp, y[:, None], -1)[:, 0], rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_array_equal(pred, jnp.argmax(lp, -1))
