"""Tests for the hierarchical sigmoid: Paddle parity, invariants, transforms, errors."""
import heapq
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jax_bigsoftmax as jbs
from jax_bigsoftmax import interop
from helpers import FIXTURES

FIX = np.load(os.path.join(FIXTURES, "hsigmoid_paddle.npz"))
CASES = [str(c) for c in FIX["cases"]]
LOG2 = math.log(2.0)


def case(name):
  get = lambda k: FIX[f"{name}/{k}"] if f"{name}/{k}" in FIX else None
  return {k: get(k) for k in ("x", "label", "weight", "bias", "path_table", "path_code",
                              "g", "out", "dx", "dweight", "dbias")} | {
                                  "num_classes": int(FIX[f"{name}/num_classes"])}


def paddle_fn(c, paddle_compat=True):
  """jit-ed sum(out * g) and its grads, Paddle's signature order."""

  def loss(x, w, b):
    out = jbs.hsigmoid_loss(x, c["label"], c["num_classes"], w, b, c["path_table"],
                            c["path_code"], paddle_compat=paddle_compat)
    return jnp.sum(out * c["g"]), out

  argnums = (0, 1, 2) if c["bias"] is not None else (0, 1)
  return jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))


def naive_nll(x, label, weight, bias, nodes_bits):
  """Plain NumPy loop: -log p(label) along the given (node, bit) path (float64)."""
  total = 0.0
  for node, bit in nodes_bits(label):
    z = float(np.dot(weight[node].astype(np.float64), x)) + (0.0 if bias is None else float(bias[node]))
    total += np.logaddexp(0.0, -z if bit else z)
  return total


def simple_code_path(num_classes):
  def path(c):
    code = int(c) + num_classes
    return [((code >> (j + 1)) - 1, (code >> j) & 1) for j in range(code.bit_length() - 1)]
  return path


def table_path(table, code):
  def path(c):
    out = []
    for n, b in zip(table[c], code[c]):
      if n < 0:
        break
      out.append((int(n), int(b)))
    return out
  return path


def heap_huffman_cost(counts):
  """Optimal expected code length (sum of merge weights), independent of ours."""
  h = [float(v) for v in counts]
  heapq.heapify(h)
  cost = 0.0
  while len(h) > 1:
    a, b = heapq.heappop(h), heapq.heappop(h)
    cost += a + b
    heapq.heappush(h, a + b)
  return cost


def rand(key, *shape, scale=1.0):
  return scale * jax.random.normal(jax.random.key(key), shape)


# --------------------------------------------------------------- Paddle parity


@pytest.mark.parametrize("name", [n for n in CASES if not n.endswith("f64")])
def test_paddle_parity_loss_and_grads(name):
  c = case(name)
  (_, out), grads = paddle_fn(c)(c["x"], c["weight"], c["bias"])
  tol = dict(rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(out, c["out"], **tol)
  np.testing.assert_allclose(grads[0], c["dx"], **tol)
  np.testing.assert_allclose(grads[1], c["dweight"], **tol)
  if c["bias"] is not None:
    np.testing.assert_allclose(grads[2], c["dbias"], **tol)


def test_paddle_parity_float64():
  c = case("default_c9_f64")
  with jax.enable_x64(True):
    (_, out), grads = paddle_fn(c)(c["x"], c["weight"], c["bias"])
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, c["out"], rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ("dx", "dweight", "dbias")):
      np.testing.assert_allclose(got, c[want], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["default_c7", "default_c33", "default_c1500", "custom_huffman_pad"])
def test_exact_mode_is_paddle_minus_padding(name):
  """Without clipping, Paddle = exact NLL + log 2 per padded slot."""
  c = case(name)
  exact = jbs.hsigmoid_loss(c["x"], c["label"][:, 0], c["num_classes"], c["weight"],
                            c["bias"], c["path_table"], c["path_code"])
  if c["path_table"] is None:
    width = (c["num_classes"] - 1).bit_length()
    length = np.array([int(v + c["num_classes"]).bit_length() - 1 for v in c["label"][:, 0]])
  else:
    width = c["path_table"].shape[1]
    length = np.argmin(np.concatenate([c["path_table"], -np.ones((len(c["x"]), 1))], 1) >= 0, 1)
  np.testing.assert_allclose(exact[:, 0] + (width - length) * LOG2, c["out"][:, 0], rtol=1e-5)


def test_module_from_paddle_state_dict_matches_paddle():
  for name, custom in (("default_c33", False), ("custom_huffman", True)):
    c = case(name)
    params = interop.hsigmoid_params_from_paddle({"hs.weight": c["weight"], "hs.bias": c["bias"]})
    head = jbs.HSigmoidLoss(c["x"].shape[1], c["num_classes"], is_custom=custom,
                            paddle_compat=True)
    out = head.apply({"params": params}, c["x"], c["label"], c["path_table"], c["path_code"])
    np.testing.assert_allclose(out, c["out"], rtol=2e-5, atol=2e-5)


# ------------------------------------------------------- independent references


@pytest.mark.parametrize("num_classes", [2, 5, 16, 37])
def test_exact_loss_matches_numpy_loop_default_tree(num_classes):
  x, w, b = rand(0, 12, 4), rand(1, num_classes - 1, 4), rand(2, num_classes - 1)
  label = np.arange(12) % num_classes
  got = jax.jit(lambda x, w, b: jbs.hsigmoid_loss(x, label, num_classes, w, b))(x, w, b)
  want = [naive_nll(np.asarray(x[i]), label[i], np.asarray(w), np.asarray(b),
                    simple_code_path(num_classes)) for i in range(12)]
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-5)


def test_exact_loss_matches_numpy_loop_custom_tree():
  table, code = (np.asarray(a) for a in jbs.huffman_tree(FIX["huffman/counts"]))
  rows = len(FIX["huffman/counts"]) - 1
  x, w = rand(3, 10, 5), rand(4, rows, 5)
  label = np.arange(10) * 3 % len(table)
  got = jbs.hsigmoid_loss(x, label, rows, w, None, table[label], code[label])
  want = [naive_nll(np.asarray(x[i]), label[i], np.asarray(w), None, table_path(table, code))
          for i in range(10)]
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-5)


@pytest.mark.parametrize("paddle_compat", [False, True])
def test_default_tree_tables_equal_default_mode(paddle_compat):
  num_classes = 23
  table, code = jbs.default_tree(num_classes)
  x, w, b = rand(5, 9, 3, scale=30.0), rand(6, num_classes - 1, 3), rand(7, num_classes - 1, 1)
  label = jnp.arange(9) * 5 % num_classes
  a = jbs.hsigmoid_loss(x, label, num_classes, w, b, paddle_compat=paddle_compat)
  t = jbs.hsigmoid_loss(x, label, num_classes, w, b, table[label], code[label],
                        paddle_compat=paddle_compat)
  np.testing.assert_allclose(a, t, rtol=1e-6)


def test_default_tree_matches_simple_code():
  table, code = jbs.default_tree(3)
  assert table.tolist() == [[0, -1], [1, 0], [1, 0]]
  assert code.tolist() == [[1, -1], [0, 0], [1, 0]]
  for c in (2, 8, 9, 1001):
    table, code = (np.asarray(a) for a in jbs.default_tree(c))
    assert table.shape == (c, (c - 1).bit_length())
    for k in (0, c // 2, c - 1):
      assert table_path(table, code)(k) == simple_code_path(c)(k)


def test_huffman_tree_matches_paddle_fixture_tree_cost():
  counts = FIX["huffman/counts"]
  table, _ = jbs.huffman_tree(counts)
  lengths = (np.asarray(table) >= 0).sum(1)
  ref_lengths = (FIX["huffman/table"] >= 0).sum(1)
  assert (counts * lengths).sum() == (counts * ref_lengths).sum() == heap_huffman_cost(counts)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=60))
def test_huffman_tree_is_optimal_and_complete(counts):
  table, code = jbs.huffman_tree(counts)
  c = len(counts)
  lengths = (np.asarray(table) >= 0).sum(1)
  assert np.isclose((np.array(counts) * lengths).sum(), heap_huffman_cost(counts))
  # A full binary tree over C leaves with C - 1 nodes: probabilities sum to 1.
  assert np.asarray(table).max() == c - 2
  q = np.random.default_rng(c).uniform(size=c - 1)  # P(bit 1) at each node
  path = table_path(np.asarray(table), np.asarray(code))
  probs = [np.prod([q[n] if bit else 1 - q[n] for n, bit in path(k)]) for k in range(c)]
  np.testing.assert_allclose(sum(probs), 1.0, rtol=1e-9)
  # Prefix-free codes: distinct (node, bit) paths.
  paths = {tuple(table_path(np.asarray(table), np.asarray(code))(k)) for k in range(c)}
  assert len(paths) == c


# ------------------------------------------------------------------ invariants


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(num_classes=st.sampled_from([7, 1000]), seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_exact_invariants(num_classes, seed, scale):
  k = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k[0], (6, 5))
  w = scale * jax.random.normal(k[1], (num_classes - 1, 5))
  b = jax.random.normal(k[2], (num_classes - 1, 1))
  label = jnp.arange(6) * 7 % num_classes
  lp = jbs.hsigmoid_log_prob(x, w, b, num_classes=num_classes)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)
  nll = jbs.hsigmoid_loss(x, label, num_classes, w, b)[:, 0]
  np.testing.assert_allclose(nll, -lp[jnp.arange(6), label], rtol=1e-5, atol=1e-5)
  pred = jbs.hsigmoid_predict(x, w, b, num_classes=num_classes, method="search")
  np.testing.assert_array_equal(pred, jnp.argmax(lp, -1))


@pytest.mark.slow
def test_predict_search_custom_tree_and_fallback():
  counts = np.random.default_rng(0).integers(1, 1000, 300)
  table, code = jbs.huffman_tree(counts)
  x, w, b = rand(10, 40, 8), rand(11, 299, 8), rand(12, 299)
  want = jnp.argmax(jbs.hsigmoid_log_prob(x, w, b, path_table=table, path_code=code), -1)
  for max_steps in (None, 2):  # 2 forces the dense fallback for most rows
    got = jax.jit(lambda x, t, c: jbs.hsigmoid_predict(
        x, w, b, path_table=t, path_code=c, method="search", max_steps=max_steps))(x, table, code)
    np.testing.assert_array_equal(got, want)


def test_predict_ties_resolve_to_first_class_and_leading_dims():
  # Shapes as in test_exact_invariants (x flattens to [6, 5]) to share compiles.
  x, b = rand(13, 2, 3, 5), jnp.zeros((999, 1))
  pred = jbs.hsigmoid_predict(x, jnp.zeros((999, 5)), b, num_classes=1000, method="search")
  assert pred.shape == (2, 3) and pred.dtype == jnp.int32
  np.testing.assert_array_equal(pred, 0)  # all classes tie: the first wins, as argmax
  w = rand(15, 999, 5, scale=2.0)
  lp = jbs.hsigmoid_log_prob(x, w, b, num_classes=1000)
  for method in ("auto", "dense", "search"):
    np.testing.assert_array_equal(jbs.hsigmoid_predict(x, w, b, num_classes=1000, method=method),
                                  jnp.argmax(lp, -1))


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize("paddle_compat", [False, True])
def test_check_grads(paddle_compat):
  num_classes = 11
  x, w, b = rand(16, 5, 3), rand(17, num_classes - 1, 3), rand(18, num_classes - 1)
  label = jnp.array([0, 3, 10, 7, 5])
  f = lambda x, w, b: jbs.hsigmoid_loss(x, label, num_classes, w, b, paddle_compat=paddle_compat)
  check_grads(f, (x, w, b), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
  table, code = jbs.huffman_tree(np.arange(1, 12))
  g = lambda x, w: jbs.hsigmoid_loss(x, label, num_classes - 1, w, None, table[label], code[label],
                                     paddle_compat=paddle_compat)
  check_grads(g, (x, w), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_extreme_logits_finite_and_clip_gradient_passes_through():
  x, w = rand(19, 4, 3, scale=1e4), rand(20, 6, 3)
  label = jnp.array([0, 1, 5, 6])
  for compat in (False, True):
    f = lambda x, w: jbs.hsigmoid_loss(x, label, 7, w, paddle_compat=compat).sum()
    val, grads = jax.value_and_grad(f, argnums=(0, 1))(x, w)
    assert np.isfinite(val) and all(np.isfinite(g).all() for g in grads)
  # Paddle's gradient ignores the clip: |dL/dz| stays sigmoid(40) - bit, not 0.
  z_grad = jax.grad(lambda s: jbs.hsigmoid_loss(jnp.ones((1, 1)) * s, jnp.array([6]), 7,
                                                jnp.ones((6, 1)), paddle_compat=True).sum())
  assert abs(float(z_grad(100.0))) > 0.5


def test_leading_dims_vmap_and_jit_agree():
  num_classes = 13
  x, w, b = rand(21, 3, 4, 5), rand(22, num_classes - 1, 5), rand(23, num_classes - 1, 1)
  label = jnp.arange(12).reshape(3, 4) % num_classes
  full = jbs.hsigmoid_loss(x, label, num_classes, w, b)
  assert full.shape == (3, 4, 1)
  per = jax.vmap(lambda xi, yi: jbs.hsigmoid_loss(xi, yi, num_classes, w, b))(x, label)
  jitted = jax.jit(jbs.hsigmoid_loss, static_argnums=2)(x, label, num_classes, w, b)
  np.testing.assert_allclose(per, full, rtol=1e-6)
  np.testing.assert_allclose(jitted, full, rtol=1e-6)
  lp = jax.vmap(lambda xi: jbs.hsigmoid_log_prob(xi, w, b, num_classes=num_classes))(x)
  np.testing.assert_allclose(lp, jbs.hsigmoid_log_prob(x, w, b, num_classes=num_classes), rtol=1e-6)


def test_sharded_batch_equals_single_device():
  mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
  num_classes = 300
  x, w, b = rand(24, 16, 8), rand(25, num_classes - 1, 8), rand(26, num_classes - 1)
  label = jnp.arange(16) * 17 % num_classes
  f = jax.jit(jax.value_and_grad(
      lambda x, w, b, y: jbs.hsigmoid_loss(x, y, num_classes, w, b, paddle_compat=True).mean(),
      argnums=(0, 1, 2)))
  rows = NamedSharding(mesh, P("batch"))
  sharded = f(jax.device_put(x, rows), w, b, jax.device_put(label, rows))
  single = f(x, w, b, label)
  for s, r in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(s, r, rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_reduce_in_float32():
  x, w = rand(27, 6, 4), rand(28, 9, 4)
  label = jnp.arange(6)
  lo = jbs.hsigmoid_loss(x.astype(jnp.bfloat16), label, 10, w.astype(jnp.bfloat16))
  assert lo.dtype == jnp.float32
  ref = jbs.hsigmoid_loss(x.astype(jnp.bfloat16).astype(jnp.float32), label, 10,
                          w.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(lo, ref, rtol=1e-6)


# ---------------------------------------------------------------------- module


def test_module_interface():
  head = jbs.HSigmoidLoss(feature_size=6, num_classes=50)
  x, y = rand(29, 2, 5, 6), jnp.arange(10).reshape(2, 5) * 4
  params = head.init(jax.random.key(0), x, y)
  assert params["params"]["weight"].shape == (49, 6)
  assert params["params"]["bias"].shape == (49, 1)
  lp = head.apply(params, x, method=head.log_prob)
  nll = head.apply(params, x, y, method=head.nll)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(lp, y[..., None], -1)[..., 0], rtol=1e-5)
  np.testing.assert_array_equal(head.apply(params, x, method=head.predict), jnp.argmax(lp, -1))
  np.testing.assert_allclose(head.apply(params, x, y)[..., 0], nll, rtol=1e-6)
  nobias = jbs.HSigmoidLoss(feature_size=6, num_classes=50, use_bias=False)
  assert "bias" not in nobias.init(jax.random.key(0), x, y)["params"]


def test_module_custom_tree():
  counts = np.arange(1, 21)
  table, code = jbs.huffman_tree(counts)
  head = jbs.HSigmoidLoss(feature_size=4, num_classes=19, is_custom=True)
  x, y = rand(30, 7, 4), jnp.arange(7) * 3
  params = head.init(jax.random.key(1), x, y, table[y], code[y])
  assert params["params"]["weight"].shape == (19, 4)
  lp = head.apply(params, x, table, code, method=head.log_prob)
  assert lp.shape == (7, 20)
  nll = head.apply(params, x, y, table[y], code[y], method=head.nll)
  np.testing.assert_allclose(nll, -lp[jnp.arange(7), y], rtol=1e-5)
  with pytest.raises(ValueError, match="is_custom=True"):
    head.apply(params, x, y)
  with pytest.raises(ValueError, match="is_custom=False"):
    jbs.HSigmoidLoss(4, 20).init(jax.random.key(0), x, y, table[y], code[y])


def test_interop_errors():
  with pytest.raises(ValueError, match="no 'weight'"):
    interop.hsigmoid_params_from_paddle({"bias": np.zeros((3, 1))})
  with pytest.raises(ValueError, match="bias"):
    interop.hsigmoid_params_from_paddle({"weight": np.zeros((3, 2)), "bias": np.zeros((4, 1))})


# ---------------------------------------------------------------------- errors


def test_errors():
  x, w, y = jnp.ones((4, 3)), jnp.ones((6, 3)), jnp.array([0, 1, 2, 3])
  with pytest.raises(ValueError, match=r"num_classes >= 2 \(got 1\)"):
    jbs.hsigmoid_loss(x, y, 1, w)
  with pytest.raises(TypeError, match="num_classes"):
    jbs.hsigmoid_loss(x, y, 7.0, w)
  with pytest.raises(ValueError, match="label must have shape"):
    jbs.hsigmoid_loss(x, y[:3], 7, w)
  with pytest.raises(ValueError, match="6 rows"):
    jbs.hsigmoid_loss(x, y, 9, w)
  with pytest.raises(ValueError, match="feature size"):
    jbs.hsigmoid_loss(x, y, 7, jnp.ones((6, 2)))
  with pytest.raises(ValueError, match="bias must have shape"):
    jbs.hsigmoid_loss(x, y, 7, w, jnp.ones((5,)))
  with pytest.raises(TypeError, match="input"):
    jbs.hsigmoid_loss(jnp.ones((4, 3), jnp.int32), y, 7, w)
  with pytest.raises(TypeError, match="label"):
    jbs.hsigmoid_loss(x, y.astype(jnp.float32), 7, w)
  with pytest.raises(ValueError, match=r"label must lie in \[0, 7\)"):
    jbs.hsigmoid_loss(x, jnp.array([0, 1, 7, 2]), 7, w)
  t = jnp.zeros((4, 2), jnp.int32)
  with pytest.raises(ValueError, match="path_table was given without path_code"):
    jbs.hsigmoid_loss(x, y, 7, w, None, t)
  with pytest.raises(ValueError, match="same shape"):
    jbs.hsigmoid_loss(x, y, 7, w, None, t, jnp.zeros((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="path_table must have shape"):
    jbs.hsigmoid_loss(x, y, 7, w, None, t[:3], t[:3])
  with pytest.raises(ValueError, match="names node \\[6\\]"):
    jbs.hsigmoid_loss(x, y, 7, w, None, t.at[1, 1].set(6), t)
  with pytest.raises(ValueError, match="num_classes is required"):
    jbs.hsigmoid_log_prob(x, w)
  with pytest.raises(ValueError, match="method"):
    jbs.hsigmoid_predict(x, w, num_classes=7, method="beam")
  with pytest.raises(ValueError, match=r"Expected num_classes >= 2"):
    jbs.HSigmoidLoss(3, 1).init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="counts"):
    jbs.huffman_tree([3])
  with pytest.raises(ValueError, match="non-negative"):
    jbs.huffman_tree([3, -1, 2])


def test_traced_bad_values_give_nan_and_checked_raises():
  x, w = jnp.ones((3, 2)), jnp.ones((6, 2))
  f = jax.jit(lambda y: jbs.hsigmoid_loss(x, y, 7, w, paddle_compat=True))
  out = f(jnp.array([0, 7, -1]))
  assert np.isfinite(out[0, 0]) and np.isnan(out[1:]).all()
  g = jax.jit(lambda t: jbs.hsigmoid_loss(x, jnp.zeros(3, jnp.int32), 6, w, None, t, t))
  out = g(jnp.array([[0, 1], [6, 0], [2, -1]]))
  assert np.isnan(out[1, 0]) and np.isfinite(out[[0, 2], 0]).all()
  err, _ = jax.jit(jbs.checked(lambda y: jbs.hsigmoid_loss(x, y, 7, w)))(jnp.array([0, 9, 1]))
  with pytest.raises(Exception, match="label must lie"):
    err.throw()
