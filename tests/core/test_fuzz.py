"""Hypothesis fuzz of the public functions and heads at the edges (issue 12).

Random shapes, input dtypes (f16/bf16/f32, f64 under x64), label dtypes
(NumPy int32/int64: int64 values are never narrowed before the range check),
ignored positions and out-of-range ids, including ids beyond int32. Every call
must end in one of: a clear ``ValueError``/``TypeError`` (exactly when an id
is out of range), a value equal to a float64 NumPy reference computed from the
definition, or NaN where documented (out-of-range ids under ``jit``). Any other
exception (IndexError, ZeroDivisionError, OverflowError, XLA errors) fails.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from jax.sharding import Mesh

import jax_bigsoftmax as jbs

pytestmark = pytest.mark.slow  # hypothesis sweeps: the full tier

X64 = bool(jax.config.jax_enable_x64)
FLOATS = [jnp.float16, jnp.bfloat16, jnp.float32] + ([jnp.float64] if X64 else [])
IGNORE = -100
# No shrinking phase: a failure is reported as drawn, which keeps a failing run
# as short as a passing one (every new shape is a new compilation).
FUZZ = settings(max_examples=6, deadline=None, derandomize=True,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _tol(dtype):
  return {jnp.dtype(jnp.float64): 1e-9, jnp.dtype(jnp.float32): 2e-4}.get(jnp.dtype(dtype), 2e-2)


def _arr(data, shape, dtype, scale=2.0):
  """Random float array of ``dtype`` and its float64 value after rounding."""
  seed = data.draw(st.integers(0, 2**16), label="seed")
  a = np.random.default_rng(seed).normal(0, scale, shape)
  x = jnp.asarray(a, dtype)
  return x, _f64(x)


def _f64(x):
  """float64 NumPy value of a JAX array (half types via float32, which holds them exactly)."""
  x = jnp.asarray(x)
  return np.asarray(x.astype(jnp.float32) if x.dtype.itemsize < 4 else x, np.float64)


def _labels(data, shape, upper, *, ignore=False, bad_ok=True):
  """NumPy labels (int32 or int64 host arrays) with optional ignored / out-of-range ids."""
  choices = [st.integers(0, upper - 1)]
  if ignore:
    choices.append(st.just(IGNORE))
  if bad_ok:
    choices.append(st.sampled_from([-1, upper, upper + 3, 2**31 - 1, 2**32 + 1, -(2**32)]))
  n = int(np.prod(shape, dtype=np.int64))
  vals = data.draw(st.lists(st.one_of(*choices), min_size=n, max_size=n), label="labels")
  dtype = data.draw(st.sampled_from([np.int32, np.int64]), label="label dtype")
  arr = np.asarray(vals, np.int64).reshape(shape)
  if dtype == np.int32 and np.any((arr > 2**31 - 1) | (arr < -(2**31))):
    dtype = np.int64  # an int32 host array cannot hold them
  arr = arr.astype(dtype)
  bad = (arr < 0) | (arr >= upper)
  if ignore:
    bad &= arr != IGNORE
  return arr, bool(bad.any()), bad


def _outcome(fn, bad):
  """Calls ``fn``; an out-of-range id must raise ValueError, anything else must not raise."""
  if bad:
    with pytest.raises(ValueError, match="must lie in"):
      fn()
    return None
  return fn()


def _log_softmax(z):
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _ce_ref(logits, y, reduction):
  lp = _log_softmax(logits)
  kept = y != IGNORE
  per = np.where(kept, -np.take_along_axis(lp, np.where(kept, y, 0)[..., None], -1)[..., 0], 0)
  if reduction == "none":
    return per
  if reduction == "sum":
    return per.sum()
  return per.sum() / kept.sum() if kept.any() else np.nan


def _close(got, ref, dtype):
  tol = _tol(dtype)
  np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=tol, atol=tol)


@FUZZ
@given(st.data())
def test_fuzz_exact_family(data):
  n = data.draw(st.integers(0, 5), label="N")
  v = data.draw(st.sampled_from([2, 3, 4, 6]), label="V")
  d = data.draw(st.integers(1, 3), label="D")
  dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
  reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
  y, bad, _ = _labels(data, (n,), v, ignore=True)
  logits, logits64 = _arr(data, (n, v), dtype)
  got = _outcome(lambda: jbs.cross_entropy(logits, y, reduction=reduction), bad)
  if got is not None:
    _close(got, _ce_ref(logits64, y, reduction), dtype)
  got = _outcome(lambda: jbs.nll_loss(jnp.asarray(_log_softmax(logits64), dtype), y,
                                      reduction=reduction), bad)
  if got is not None:
    ref_lp = _f64(jnp.asarray(_log_softmax(logits64), dtype))
    _close(got, _ce_ref(ref_lp, y, reduction) if n else _ce_ref(logits64, y, reduction), dtype)
  x, x64 = _arr(data, (n, d), dtype, 1.0)
  w, w64 = _arr(data, (v, d), dtype, 1.0)
  chunk = data.draw(st.integers(1, v), label="chunk")
  got = _outcome(lambda: jbs.linear_cross_entropy(x, w, y, reduction=reduction,
                                                  chunk_size=chunk), bad)
  if got is not None:
    _close(got, _ce_ref(x64 @ w64.T, y, reduction), dtype)
  if v % 2 == 0:
    mesh = Mesh(np.array(jax.devices()[:2]), ("vocab",))
    got = _outcome(lambda: jbs.vocab_parallel_cross_entropy(x, w, y, mesh=mesh,
                                                            reduction=reduction), bad)
    if got is not None:
      _close(got, _ce_ref(x64 @ w64.T, y, reduction), dtype)


def _poison_rows(data, x, ignored, dtype):
  poison = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="poison")
  return jnp.where(jnp.asarray(ignored)[:, None], jnp.asarray(poison, dtype), x)


@FUZZ
@given(st.data())
def test_fuzz_exact_family_edges(data):
  """NaN/inf rows at ignored positions, -inf (banned) classes, softcap and z-loss: the
  values equal a float64 reference and every gradient is finite."""
  n = data.draw(st.integers(1, 5), label="N")
  v = data.draw(st.sampled_from([2, 4, 6]), label="V")
  d = data.draw(st.integers(1, 3), label="D")
  dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
  reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
  y, _, _ = _labels(data, (n,), v, ignore=True, bad_ok=False)
  ignored = y == IGNORE
  banned = data.draw(st.integers(0, v // 2), label="banned classes")
  b64 = np.where(np.arange(v) < banned, -np.inf, 0.0)
  y = np.where(ignored | (y >= banned), y, banned).astype(y.dtype)  # labels on allowed classes
  cap = data.draw(st.sampled_from([None, 1.5]), label="softcap")
  zl = data.draw(st.sampled_from([0.0, 0.1]), label="z_loss")
  x, x64 = _arr(data, (n, d), dtype, 1.0)
  w, w64 = _arr(data, (v, d), dtype, 1.0)
  xp = _poison_rows(data, x, ignored, dtype)
  b = jnp.asarray(b64, dtype)
  z = x64 @ w64.T + b64
  if cap is not None:
    z = cap * np.tanh(z / cap)
  kept = ~ignored
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  per = np.where(kept, _ce_ref(z, y, "none") + zl * lse**2, 0.0)
  ref = {"none": per, "sum": per.sum(),
         "mean": per.sum() / kept.sum() if kept.any() else np.nan}[reduction]
  chunk = data.draw(st.integers(1, v), label="chunk")

  def loss(xp, w):
    out = jbs.linear_cross_entropy(xp, w, y, b, reduction=reduction, chunk_size=chunk,
                                   z_loss=zl, logit_softcap=cap)
    return jnp.sum(jnp.where(jnp.isnan(out), 0.0, out)), out

  (_, got), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(xp, w)
  _close(got, ref, dtype)
  if kept.any():
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
  logits = jnp.asarray(np.where(kept[:, None], z, np.nan), dtype)
  if cap is None and not zl:
    _close(jbs.cross_entropy(logits, y, reduction=reduction), ref, dtype)
  if v % 2 == 0:
    mesh = Mesh(np.array(jax.devices()[:2]), ("vocab",))
    got = jbs.vocab_parallel_cross_entropy(xp, w, y, b, mesh=mesh, reduction=reduction,
                                           z_loss=zl, logit_softcap=cap)
    _close(got, ref, dtype)


@FUZZ
@given(st.data())
def test_fuzz_argmax_follows_jnp_argmax(data):
  n = data.draw(st.integers(1, 4), label="N")
  v = data.draw(st.integers(2, 9), label="V")
  x, _ = _arr(data, (n, 2), jnp.float32, 1.0)
  w = jnp.asarray(np.random.default_rng(0).integers(-2, 3, size=(v, 2)), jnp.float32)  # ties
  nan_cols = data.draw(st.lists(st.integers(0, v - 1), max_size=2), label="NaN classes")
  b = jnp.zeros((v,)).at[jnp.asarray(nan_cols, jnp.int32)].set(jnp.nan)
  chunk = data.draw(st.integers(1, v), label="chunk")
  want = np.asarray(jnp.argmax(x @ w.T + b[None], -1))
  np.testing.assert_array_equal(jbs.linear_argmax(x, w, b, chunk_size=chunk), want)
  _, aux = jbs.linear_cross_entropy(x, w, jnp.zeros((n,), jnp.int32), b, chunk_size=chunk,
                                    return_aux=True)
  np.testing.assert_array_equal(aux["predicted"], want)


def _hs_default_ref(x64, w64, b64, c):
  z = x64 @ w64.T + b64
  lp = np.zeros((x64.shape[0], c))
  for k in range(c):
    code = k + c
    for j in range(code.bit_length() - 1):
      node, bit = (code >> (j + 1)) - 1, (code >> j) & 1
      s = z[:, node] if bit else -z[:, node]
      lp[:, k] += -np.logaddexp(0.0, -s)  # log sigmoid(s)
  return lp


@FUZZ
@given(st.data())
def test_fuzz_hsigmoid(data):
  n = data.draw(st.sampled_from([1, 3]), label="N")
  c = data.draw(st.sampled_from([2, 5, 9]), label="C")
  d = data.draw(st.integers(1, 3), label="D")
  dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
  y, bad, _ = _labels(data, (n,), c)
  x, x64 = _arr(data, (n, d), dtype, 1.0)
  w, w64 = _arr(data, (c - 1, d), dtype, 1.0)
  b, b64 = _arr(data, (c - 1,), dtype, 0.5)
  ref = _hs_default_ref(x64, w64, b64, c)
  got = _outcome(lambda: jbs.hsigmoid_loss(x, y, c, w, b), bad)
  if got is not None:
    _close(got[:, 0], -ref[np.arange(n), y], dtype)
  _close(jbs.hsigmoid_log_prob(x, w, b, num_classes=c), ref, dtype)
  pred = jbs.hsigmoid_predict(x, w, b, num_classes=c, method="search")
  # The search's answer is a maximiser of the reference (up to rounding ties).
  np.testing.assert_array_less(ref.max(-1) - ref[np.arange(n), np.asarray(pred)],
                               _tol(dtype) * (1 + np.abs(ref.max(-1))))
  # Custom per-example tables of the same tree, with out-of-range nodes.
  table, code = (np.asarray(t) for t in jbs.default_tree(c))
  yy = np.clip(np.where(y == IGNORE, 0, y), 0, c - 1).astype(np.int64)
  pt, pc = table[yy].astype(np.int64), code[yy].astype(np.int64)
  if data.draw(st.booleans(), label="bad node"):
    pt[0, 0] = data.draw(st.sampled_from([c - 1, c + 5, 2**32 + 1]), label="node")
  node_bad = bool(((np.minimum.accumulate(pt >= 0, -1)) & (pt >= c - 1)).any())
  got = _outcome(lambda: jbs.hsigmoid_loss(x, yy, c, w, b, path_table=pt, path_code=pc),
                 node_bad)
  if got is not None:
    _close(got[:, 0], -ref[np.arange(n), yy], dtype)


def _adaptive_ref(x64, hw, hb, tails, bounds):
  head = _log_softmax(x64 @ hw + hb)
  sl = bounds[0]
  out = [head[:, :sl]]
  for i, (p, o) in enumerate(tails):
    out.append(head[:, sl + i:sl + i + 1] + _log_softmax(x64 @ p @ o))
  return np.concatenate(out, -1)


@FUZZ
@given(st.data())
def test_fuzz_adaptive_with_nan_rows_at_ignored_positions(data):
  n = data.draw(st.integers(0, 5), label="N")
  d = data.draw(st.integers(1, 3), label="D")
  dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
  bounds = data.draw(st.sampled_from([[2, 4], [1, 3, 6], [3, 5, 6, 8]]), label="bounds")
  y, bad, _ = _labels(data, (n,), bounds[-1], ignore=True)
  x, x64 = _arr(data, (n, d), dtype, 1.0)
  hw, hw64 = _arr(data, (d, bounds[0] + len(bounds) - 1), dtype, 1.0)
  hb, hb64 = _arr(data, (bounds[0] + len(bounds) - 1,), dtype, 0.5)
  tails, tails64 = [], []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    (p, p64), (o, o64) = _arr(data, (d, 1), dtype, 1.0), _arr(data, (1, hi - lo), dtype, 1.0)
    tails.append((p, o))
    tails64.append((p64, o64))
  ref = _adaptive_ref(x64, hw64, hb64, tails64, bounds)
  # A NaN / -inf input row at an ignored position must not leak into the loss.
  ignored = y == IGNORE
  poison = data.draw(st.sampled_from([np.nan, -np.inf]), label="poison")
  xp = jnp.where(jnp.asarray(ignored)[:, None], jnp.asarray(poison, dtype), x)
  got = _outcome(lambda: jbs.adaptive_log_softmax_with_loss(xp, y, hw, tails, bounds, hb,
                                                            ignore_index=IGNORE), bad)
  if got is not None:
    out, loss = got
    kept = ~ignored
    ref_out = np.where(kept, ref[np.arange(n), np.where(kept, y, 0)], 0.0)
    _close(out, ref_out, dtype)
    _close(loss, -ref_out.sum() / kept.sum() if kept.any() else np.nan, dtype)
  if n:
    _close(jbs.adaptive_log_prob(x, hw, tails, bounds, hb), ref, dtype)
    pred = np.asarray(jbs.adaptive_predict(x, hw, tails, bounds, hb))
    np.testing.assert_array_less(ref.max(-1) - ref[np.arange(n), pred],
                                 _tol(dtype) * (1 + np.abs(ref.max(-1))))


@FUZZ
@given(st.data())
def test_fuzz_sampled_family(data):
  n = data.draw(st.integers(1, 4), label="N")
  t = data.draw(st.integers(1, 3), label="T")
  v = data.draw(st.sampled_from([6, 8]), label="V")
  s = data.draw(st.integers(1, 3), label="S")
  d = data.draw(st.integers(1, 3), label="D")
  dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
  y, bad, _ = _labels(data, (n, t), v)
  sampled, s_bad, _ = _labels(data, (s,), v)
  x, x64 = _arr(data, (n, d), dtype, 1.0)
  w, w64 = _arr(data, (v, d), dtype, 1.0)
  b, b64 = _arr(data, (v,), dtype, 0.5)
  true_ec = np.full((n, t), 0.5)
  samp_ec = np.full((s,), 0.25)
  got = _outcome(lambda: jbs.sampled_softmax_loss(
      w, b, y, x, s, v, t, (sampled, true_ec, samp_ec), remove_accidental_hits=False),
      bad or s_bad)
  if got is not None:
    zt = np.einsum("nd,ntd->nt", x64, w64[y]) + b64[y] - np.log(0.5)
    zs = x64 @ w64[sampled].T + b64[sampled] - np.log(0.25)
    allz = np.concatenate([zt, zs], -1)
    m = allz.max(-1, keepdims=True)
    ref = (m[:, 0] + np.log(np.exp(allz - m).sum(-1))) - zt.mean(-1)
    _close(got, ref, dtype)
  # Paddle's layer with customized samples: the same formula on given logits.
  logits, logits64 = _arr(data, (n, v), dtype)
  cs = np.concatenate([y, np.broadcast_to(sampled, (n, s))], -1)
  probs = np.full(cs.shape, 0.5)
  got = _outcome(lambda: jbs.sampled_softmax_with_cross_entropy(
      logits, y, s, t, remove_accidental_hits=False, use_customized_samples=True,
      customized_samples=cs, customized_probabilities=probs), bad or s_bad)
  if got is not None:
    z = np.take_along_axis(logits64, cs, -1) - np.log(0.5)
    m = z.max(-1, keepdims=True)
    ref = m[:, 0] + np.log(np.exp(z - m).sum(-1)) - z[:, :t].mean(-1)
    _close(got[:, 0], ref, dtype)


@FUZZ
@given(st.data())
def test_fuzz_heads(data):
  n = data.draw(st.integers(1, 4), label="N")
  d = data.draw(st.integers(1, 3), label="D")
  v = data.draw(st.sampled_from([4, 6]), label="V")
  in_dtype = data.draw(st.sampled_from(FLOATS + [jnp.int32]), label="input dtype")
  y, bad, _ = _labels(data, (n,), v, ignore=True)
  heads = {
      "full": jbs.FullSoftmaxLoss(num_classes=v, features=d),
      "sampled": jbs.SampledSoftmaxLoss(num_classes=v, features=d, num_sampled=2),
      "hsigmoid": jbs.HSigmoidLoss(feature_size=d, num_classes=v),
      "adaptive": jbs.AdaptiveLogSoftmaxWithLoss(max(d, 1) * 4, v, cutoffs=(2,), div_value=4.0),
  }
  name = data.draw(st.sampled_from(sorted(heads)), label="head")
  head = heads[name]
  dd = max(d, 1) * 4 if name == "adaptive" else d
  seed = data.draw(st.integers(0, 100), label="seed")
  xf = np.random.default_rng(seed).normal(0, 2, (n, dd))
  x = jnp.asarray(np.round(xf) if in_dtype == jnp.int32 else xf, in_dtype)
  params = head.init({"params": jax.random.key(seed), "sampler": jax.random.key(1)},
                     jnp.ones((n, dd)), jnp.zeros((n,), jnp.int32))
  if jnp.issubdtype(in_dtype, jnp.integer) and name in ("hsigmoid", "adaptive"):
    with pytest.raises(TypeError, match="floating"):
      head.apply(params, x, method=head.log_prob)
    return
  lp = np.asarray(head.apply(params, x, method=head.log_prob), np.float64)
  assert np.all(np.isfinite(lp))
  np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=_tol(in_dtype) * 10)
  # Reference log-probabilities from the float64 params and the inputs' values.
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  x64 = _f64(x)
  if name in ("full", "sampled"):
    ref = _log_softmax(x64 @ p64["weight"].T + p64["bias"])
    _close(lp, ref, in_dtype)
  elif name == "hsigmoid":
    ref = _hs_default_ref(x64, p64["weight"], p64["bias"][:, 0], v)
    _close(lp, ref, in_dtype)
  else:
    ref = lp  # adaptive: checked against torch fixtures elsewhere; here nll == -log_prob
  yk = np.where(y == IGNORE, 0, y)
  if name == "hsigmoid":
    got = _outcome(lambda: head.apply(params, x, y, method=head.nll), bad or (y == IGNORE).any())
    if got is not None:
      _close(got, -ref[np.arange(n), yk], in_dtype)
    return
  got = _outcome(lambda: head.apply(params, x, y, method=head.nll), bad)
  if got is not None:
    _close(got, np.where(y == IGNORE, 0.0, -ref[np.arange(n), yk]), in_dtype)


JIT_CALLS = {
    "cross_entropy": lambda y: jbs.cross_entropy(jnp.zeros((y.shape[0], 3)), y,
                                                 reduction="none"),
    "linear_cross_entropy": lambda y: jbs.linear_cross_entropy(
        jnp.ones((y.shape[0], 2)), jnp.ones((3, 2)), y, reduction="none", chunk_size=2),
    "hsigmoid_loss": lambda y: jbs.hsigmoid_loss(jnp.ones((y.shape[0], 2)), y, 3,
                                                 jnp.ones((2, 2)))[:, 0],
    "adaptive": lambda y: jbs.adaptive_log_softmax_with_loss(
        jnp.ones((y.shape[0], 4)), y, jnp.zeros((4, 3)),
        [(jnp.ones((4, 1)), jnp.zeros((1, 1)))], [2, 3])[0],
    "sampled_softmax_loss": lambda y: jbs.sampled_softmax_loss(
        jnp.ones((3, 2)), None, y[:, None], jnp.ones((y.shape[0], 2)), 1, 3,
        sampled_values=(jnp.array([0]), jnp.ones((y.shape[0], 1)), jnp.ones((1,)))),
}


@FUZZ
@given(st.data())
def test_fuzz_out_of_range_ids_under_jit_are_nan(data):
  name = data.draw(st.sampled_from(sorted(JIT_CALLS)), label="fn")
  n = data.draw(st.integers(1, 4), label="N")
  y, _, bad = _labels(data, (n,), 3)
  if not X64:
    y = np.clip(y, -(2**31), 2**31 - 1).astype(np.int32)  # traced ids are int32 here
    bad = (y < 0) | (y >= 3)
  out = np.asarray(jax.jit(JIT_CALLS[name])(jnp.asarray(y)), np.float64)
  assert np.all(np.isnan(out[bad])), (y, out)
  assert np.all(np.isfinite(out[~bad])), (y, out)
  err, _ = jax.jit(jbs.checked(JIT_CALLS[name]))(jnp.asarray(y))
  assert (err.get() is not None) == bool(bad.any())
  if bad.any():
    assert "out-of-range value" in err.get()
