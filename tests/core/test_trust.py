"""Regression tests for issue 12 (no silent wrong numbers at the edges).

One test per class of fault: ids range-checked at their own width (x64,
NumPy int64), ``checked()`` independent of jit caches, eager checks that never
fetch non-addressable data, heads that never cast parameters down, and clear
errors instead of internal ones.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import helpers
import jax_bigsoftmax as jbs
from jax_bigsoftmax._core import checks as _checks

X64 = bool(jax.config.jax_enable_x64)
needs_x64 = pytest.mark.skipif(not X64, reason="int64 ids beyond int32 need jax_enable_x64")
BIG = 2**32 + 1  # wraps onto 1 when narrowed to int32


def _tails():
  return [(jnp.ones((4, 1)), jnp.zeros((1, 2)))]


def _mesh(n=2):
  return helpers.mesh((n,))


# --- item 3: ids are range-checked at their own width --------------------------------------

CONCRETE_CALLS = {
    "cross_entropy": lambda y: jbs.cross_entropy(jnp.zeros((1, 3)), y),
    "nll_loss": lambda y: jbs.nll_loss(jnp.zeros((1, 3)), y),
    "linear_cross_entropy": lambda y: jbs.linear_cross_entropy(
        jnp.ones((1, 2)), jnp.ones((3, 2)), y, chunk_size=2),
    "vocab_parallel_cross_entropy": lambda y: jbs.vocab_parallel_cross_entropy(
        jnp.ones((1, 2)), jnp.ones((4, 2)), y, mesh=_mesh()),
    "hsigmoid_loss": lambda y: jbs.hsigmoid_loss(jnp.ones((1, 2)), y, 3, jnp.ones((2, 2))),
    "adaptive": lambda y: jbs.adaptive_log_softmax_with_loss(
        jnp.ones((1, 4)), y, jnp.zeros((4, 3)), _tails(), [2, 4]),
    "vp_adaptive": lambda y: jbs.vocab_parallel_adaptive_log_softmax_with_loss(
        jnp.ones((1, 4)), y, jnp.zeros((4, 3)), _tails(), [2, 4], mesh=_mesh(1)),
    "sampled_softmax_loss": lambda y: jbs.sampled_softmax_loss(
        jnp.ones((10, 2)), None, y[:, None], jnp.ones((1, 2)), 2, 10, key=jax.random.key(0)),
    "paddle_sampled": lambda y: jbs.sampled_softmax_with_cross_entropy(
        jnp.ones((1, 10)), y[:, None], 2),
}


@pytest.mark.parametrize("name", sorted(CONCRETE_CALLS))
def test_numpy_int64_labels_do_not_wrap(name):
  # Without x64, JAX narrows int64 to int32: 2**32 + 1 would become the valid class 1.
  with pytest.raises(ValueError, match="4294967297"):
    CONCRETE_CALLS[name](np.array([BIG], np.int64))


@needs_x64
@pytest.mark.parametrize("name", sorted(CONCRETE_CALLS))
def test_traced_int64_labels_beyond_int32_give_nan(name):
  out = jax.jit(CONCRETE_CALLS[name])(jnp.array([BIG], jnp.int64))
  out = out[0] if isinstance(out, tuple) else out
  assert np.all(np.isnan(np.asarray(out)))


@needs_x64
def test_traced_int64_hsigmoid_nodes_and_sample_ids_beyond_int32_give_nan():
  x, w = jnp.ones((1, 2)), jnp.ones((2, 2))
  pt, pc = jnp.array([[BIG, -1]], jnp.int64), jnp.array([[1, -1]], jnp.int64)
  f = jax.jit(lambda pt, pc: jbs.hsigmoid_loss(x, jnp.array([0]), 3, w, path_table=pt,
                                               path_code=pc))
  assert np.isnan(np.asarray(f(pt, pc))).all()
  lp = jax.jit(lambda pt, pc: jbs.hsigmoid_log_prob(x, w, path_table=pt, path_code=pc))(
      jnp.array([[BIG], [0]], jnp.int64), jnp.array([[1], [0]], jnp.int64))
  assert np.isnan(np.asarray(lp[:, 0])).all() and np.isfinite(np.asarray(lp[:, 1])).all()
  sv = (jnp.array([BIG, 1], jnp.int64), jnp.ones((1, 1)), jnp.ones((2,)))
  for fn in (lambda sv: jbs.sampled_softmax_loss(jnp.ones((10, 2)), None, jnp.array([[0]]),
                                                 jnp.ones((1, 2)), 2, 10, sampled_values=sv),
             lambda sv: jbs.vocab_parallel_sampled_softmax_loss(
                 jnp.ones((10, 2)), None, jnp.array([[0]]), jnp.ones((1, 2)), 2, 10,
                 sampled_values=sv, mesh=_mesh())):
    assert np.isnan(np.asarray(jax.jit(fn)(sv))).all()


def test_hsigmoid_predict_runs_in_the_default_precision_mode():
  # Under JAX_ENABLE_X64=1 (the second CI run) the search used to crash (int32/int64 carry).
  x = jax.random.normal(jax.random.key(0), (4, 8))
  w = jax.random.normal(jax.random.key(1), (999, 8))
  dense = jbs.hsigmoid_log_prob(x, w, num_classes=1000).argmax(-1)
  np.testing.assert_array_equal(jbs.hsigmoid_predict(x, w, num_classes=1000, method="search"),
                                dense)
  t, c = jbs.huffman_tree(np.arange(1, 1001))
  dense = jbs.hsigmoid_log_prob(x, w, path_table=t, path_code=c).argmax(-1)
  np.testing.assert_array_equal(
      jbs.hsigmoid_predict(x, w, path_table=t, path_code=c, method="search"), dense)
  head = jbs.HSigmoidLoss(feature_size=8, num_classes=1000)
  params = head.init(jax.random.key(0), x, jnp.zeros((4,), jnp.int32))
  pred = head.apply(params, x, method=head.predict)
  np.testing.assert_array_equal(pred, head.apply(params, x, method=head.log_prob).argmax(-1))


def test_ignore_index_that_the_label_dtype_cannot_hold_is_a_clear_error():
  y = jnp.array([0, 1], jnp.int32)
  with pytest.raises(ValueError, match="ignore_index=1099511627776 does not fit"):
    jbs.cross_entropy(jnp.zeros((2, 3)), y, ignore_index=2**40)
  with pytest.raises(ValueError, match="ignore_index"):
    jbs.vocab_parallel_adaptive_log_softmax_with_loss(
        jnp.ones((2, 4)), y, jnp.zeros((4, 3)), _tails(), [2, 4], mesh=_mesh(1),
        ignore_index=2**40)
  with pytest.raises(TypeError, match="ignore_index must be a Python int"):
    jbs.cross_entropy(jnp.zeros((2, 3)), y, ignore_index=1.5)


@needs_x64
def test_int64_ignore_index_beyond_int32_works_with_int64_labels():
  y = jnp.array([0, 2**40], jnp.int64)
  got = jbs.cross_entropy(jnp.zeros((2, 3)), y, ignore_index=2**40)
  np.testing.assert_allclose(got, np.log(3.0), rtol=1e-12)


# --- item 4: checked() does not depend on jit caches ---------------------------------------


def test_checked_on_an_already_jitted_function_checks_and_does_not_poison_it():
  g = jax.jit(lambda x, y: jbs.cross_entropy(x, y))
  x, bad = jnp.zeros((2, 3)), jnp.array([0, 5])
  err, _ = jbs.checked(g)(x, bad)
  assert "found out-of-range value 5" in err.get()
  assert np.isnan(float(g(x, bad)))  # plain call still works: NaN, no checkify error
  err, _ = jax.jit(jbs.checked(g))(x, jnp.array([0, 2]))
  assert err.get() is None


def test_checked_after_a_plain_call_still_checks():
  g = jax.jit(lambda x, y: jbs.cross_entropy(x, y))
  x = jnp.zeros((2, 3))
  assert np.isfinite(float(g(x, jnp.array([0, 1]))))  # fills g's cache without checks
  err, _ = jbs.checked(g)(x, jnp.array([0, 7]))
  assert "out-of-range value 7" in err.get()


def test_checked_covers_custom_hsigmoid_tables_and_every_true_column():
  x, w = jnp.ones((2, 2)), jnp.ones((2, 2))
  pt, pc = jnp.array([[5, -1], [0, -1]]), jnp.array([[1, -1], [0, -1]])
  f = jax.jit(jbs.checked(lambda pt, pc: jbs.hsigmoid_loss(x, jnp.array([0, 1]), 3, w,
                                                           path_table=pt, path_code=pc)))
  err, out = f(pt, pc)
  assert "path_table" in err.get() and "value 5" in err.get()
  assert np.isnan(np.asarray(out[0])).all()
  lp = jax.jit(jbs.checked(lambda pt, pc: jbs.hsigmoid_log_prob(x, w, path_table=pt,
                                                                path_code=pc)))
  assert "value 5" in lp(pt, pc)[0].get()

  head = jbs.SampledSoftmaxLoss(num_classes=10, features=2, num_sampled=3, num_true=2)
  xs = jnp.ones((1, 2))
  params = head.init({"params": jax.random.key(0), "sampler": jax.random.key(1)}, xs,
                     jnp.array([[1, 2]]), deterministic=True)
  bad = jnp.array([[1, 12]])  # only the second true column is out of range
  with pytest.raises(ValueError, match="12"):
    head.apply(params, xs, bad, deterministic=True)
  for det in (True, False):
    fn = jax.jit(jbs.checked(lambda y, det=det: head.apply(
        params, xs, y, deterministic=det, rngs={"sampler": jax.random.key(2)})))
    err, loss = fn(bad)
    assert "value 12" in err.get()
    assert np.isnan(np.asarray(loss)).all()


def test_checked_under_vmap_and_grad():
  f = lambda x, y: jbs.linear_cross_entropy(x, jnp.ones((4, 2)), y, chunk_size=2)
  err, _ = jax.jit(jbs.checked(jax.vmap(f)))(jnp.ones((3, 2, 2)),
                                             jnp.array([[0, 1], [2, 3], [0, 9]]))
  assert "value 9" in err.get()
  err, g = jax.jit(jbs.checked(jax.grad(f)))(jnp.ones((2, 2)), jnp.array([0, 3]))
  assert err.get() is None and np.isfinite(np.asarray(g)).all()


# --- item 5: eager checks never fetch non-addressable data ---------------------------------


class _Shard:
  def __init__(self, data, start):
    self.data = np.asarray(data)
    self.index = (slice(start, start + len(data)),)


class _GlobalArray:
  """Stands in for a multi-process jax.Array: only some shards are addressable."""
  is_fully_addressable = False
  dtype = np.dtype(np.int32)

  def __init__(self, shards):
    self.addressable_shards = shards

  def __array__(self, *args, **kwargs):
    raise RuntimeError("Fetching value for jax.Array that spans non-addressable devices")


def test_eager_checks_read_only_addressable_shards():
  ok = _GlobalArray([_Shard([0, 1], 0), _Shard([2, 1], 2)])
  _checks.check_labels_in_range(ok, 3, name="labels", ignore_index=-100)  # no fetch, no error
  bad = _GlobalArray([_Shard([0, 1], 0), _Shard([2, 7], 6)])
  with pytest.raises(ValueError, match=r"got \[7\] at positions \[\[7\]\]"):
    _checks.check_labels_in_range(bad, 3, name="labels")


def test_eager_checks_on_sharded_arrays_report_global_positions():
  mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
  y = jax.device_put(jnp.array([0, 1, 2, 0, 1, 2, 0, 9]), NamedSharding(mesh, P("d")))
  with pytest.raises(ValueError, match=r"positions \[\[7\]\]"):
    jbs.cross_entropy(jnp.zeros((8, 3)), y)


# --- item 6: heads never cast parameters down ----------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: jbs.FullSoftmaxLoss(num_classes=5, features=3),
    lambda: jbs.SampledSoftmaxLoss(num_classes=5, features=3, num_sampled=2),
])
def test_heads_promote_integer_and_half_inputs(make):
  head = make()
  xf = jnp.array([[1.0, 2.0, -1.0], [0.0, 3.0, 1.0]])
  params = head.init({"params": jax.random.key(0), "sampler": jax.random.key(1)}, xf,
                     jnp.zeros((2,), jnp.int32))
  ref = head.apply(params, xf, method=head.log_prob)
  got = head.apply(params, xf.astype(jnp.int32), method=head.log_prob)
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  assert not np.allclose(np.asarray(got[0]), np.asarray(got[0, 0]))  # not uniform
  y = jnp.array([1, 4])
  np.testing.assert_allclose(head.apply(params, xf.astype(jnp.int32), y, method=head.nll),
                             head.apply(params, xf, y, method=head.nll), rtol=1e-6)
  # bf16 inputs meet float32 params in float32 (params not rounded to bf16).
  xb = xf.astype(jnp.bfloat16)
  np.testing.assert_allclose(head.apply(params, xb, method=head.log_prob),
                             head.apply(params, xb.astype(jnp.float32), method=head.log_prob),
                             rtol=1e-6)
  with pytest.raises(TypeError, match="computation dtype must be floating"):
    type(head)(**{**{f: getattr(head, f) for f in ("num_classes", "features")},
                  **({"num_sampled": 2} if hasattr(head, "num_sampled") else {}),
                  "dtype": jnp.int32}).apply(params, xf, method=head.log_prob)


# --- item 9: clear errors instead of internal ones -----------------------------------------


def test_vocab_parallel_adaptive_empty_batch_matches_single_device():
  args = (jnp.ones((0, 4)), jnp.zeros((0,), jnp.int32), jnp.zeros((4, 3)), _tails(), [2, 4])
  out, loss = jbs.vocab_parallel_adaptive_log_softmax_with_loss(*args, mesh=_mesh(1))
  ref_out, ref_loss = jbs.adaptive_log_softmax_with_loss(*args)
  assert out.shape == ref_out.shape == (0,)
  assert np.isnan(float(loss)) and np.isnan(float(ref_loss))


def test_adaptive_zero_features_is_a_value_error():
  args = (jnp.ones((2, 0)), jnp.zeros((2,), jnp.int32), jnp.zeros((0, 3)),
          [(jnp.ones((0, 1)), jnp.zeros((1, 2)))], [2, 4])
  for fn in (jbs.adaptive_log_softmax_with_loss,
             lambda *a: jbs.vocab_parallel_adaptive_log_softmax_with_loss(*a, mesh=_mesh(1))):
    with pytest.raises(ValueError, match="at least one feature"):
      fn(*args)


@pytest.mark.parametrize("div_value,err", [(0, ValueError), (-2.0, ValueError),
                                           (float("nan"), ValueError), ("4", TypeError),
                                           (True, TypeError)])
def test_bad_div_value_is_a_clear_error(div_value, err):
  counts = np.arange(100, 0, -1)
  with pytest.raises(err, match="div_value"):
    jbs.suggest_cutoffs(counts, in_features=16, div_value=div_value)
  with pytest.raises(err, match="div_value"):
    jbs.adaptive_cost(counts, [10], in_features=16, div_value=div_value)
  with pytest.raises(err, match="div_value"):
    head = jbs.AdaptiveLogSoftmaxWithLoss(16, 100, cutoffs=(10,), div_value=div_value)
    head.init(jax.random.key(0), jnp.ones((1, 16)), jnp.zeros((1,), jnp.int32))
