"""Vocabulary-parallel heads (exact, sampled, adaptive) over the 8 CPU devices == single device."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import helpers
import jax_bigsoftmax as jbs


def _problem(n=32, d=8, v=96, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), jnp.float32)
  b = jnp.asarray(rng.normal(size=(v,)), jnp.float32)
  y = rng.integers(0, v, size=n)
  y[::5] = -100
  cw = jnp.asarray(rng.uniform(0.5, 2.0, size=v), jnp.float32)
  return x, w, b, jnp.asarray(y, jnp.int32), cw


@pytest.mark.parametrize("shape,names,data_axis", helpers.tiered([
    ((8,), ("vocab",), None),
    ((8, 1), ("data", "vocab"), "data"),
    ((4, 2), ("data", "vocab"), "data"),
    ((2, 4), ("data", "vocab"), "data"),
], fast=(0, 2)))
@pytest.mark.parametrize("smoothing,weighted,use_bias", [(0.0, False, True), (0.1, True, False)])
def test_equals_single_device(shape, names, data_axis, smoothing, weighted, use_bias):
  x, w, b, y, cw = _problem()
  b = b if use_bias else None
  cw = cw if weighted else None
  mesh = Mesh(np.array(jax.devices()).reshape(shape), names)

  def single(x, w, b):
    return jbs.linear_cross_entropy(x, w, y, b, class_weight=cw, label_smoothing=smoothing,
                                    chunk_size=7)

  def sharded(x, w, b):
    return jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh, data_axis=data_axis,
                                            class_weight=cw, label_smoothing=smoothing,
                                            chunk_size=7)

  argnums = (0, 1, 2) if use_bias else (0, 1)
  ref = jax.value_and_grad(single, argnums=argnums)(x, w, b)
  got = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(x, w, b)
  for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-6)


def test_reduction_none_and_leading_dims():
  x, w, b, y, _ = _problem()
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "vocab"))
  out = jbs.vocab_parallel_cross_entropy(x.reshape(4, 8, -1), w, y.reshape(4, 8), b, mesh=mesh,
                                         data_axis="data", reduction="none")
  ref = jbs.linear_cross_entropy(x.reshape(4, 8, -1), w, y.reshape(4, 8), b, reduction="none")
  assert out.shape == (4, 8)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_errors():
  x, w, b, y, _ = _problem(v=90)
  mesh = Mesh(np.array(jax.devices()), ("vocab",))
  with pytest.raises(ValueError, match="V=90 rows, which does not divide by the size of mesh axis 'vocab' \\(8\\)"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh)
  with pytest.raises(ValueError, match="vocab_axis='model' is not an axis of the mesh"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh, vocab_axis="model")
  mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "vocab"))
  x, w, b, y, _ = _problem(n=30)
  with pytest.raises(ValueError, match="30 rows, which does not divide by the size of mesh axis 'data'"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh2, data_axis="data")


# ----------------------------------------------------------------------------
# Vocab-parallel sampled softmax == single-device sampled_softmax_loss.
# ----------------------------------------------------------------------------

_mesh = helpers.mesh


def _sampled_problem(n=16, d=8, v=96, t=1, s=12, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), jnp.float32)
  b = jnp.asarray(rng.normal(size=(v,)), jnp.float32)
  y = jnp.asarray(rng.integers(0, v, size=(n, t)), jnp.int32)
  sv = jbs.log_uniform_candidate_sampler(jax.random.key(seed), y, t, s, True, v)
  # Force accidental hits: two sampled ids equal to labels of rows 0 and 3.
  sampled = sv[0].at[0].set(y[0, 0]).at[1].set(y[3, t - 1])
  if len(set(np.asarray(sampled).tolist())) < s:  # keep the samples distinct
    sampled = sv[0]
  return x, w, b, y, (sampled, sv[1], sv[2])


@pytest.mark.parametrize("shape,names,data_axis,num_true,use_bias,hits", [
    ((8,), ("vocab",), None, 1, True, True),
    ((8, 1), ("data", "vocab"), "data", 3, False, True),
    ((4, 2), ("data", "vocab"), "data", 2, True, False),
    ((4, 2), ("data", "vocab"), "data", 1, True, True),
])
def test_sampled_equals_single_device(shape, names, data_axis, num_true, use_bias, hits):
  x, w, b, y, sv = _sampled_problem(t=num_true)
  b = b if use_bias else None
  mesh = _mesh(shape, names)
  s, v = sv[0].shape[0], w.shape[0]

  def single(x, w, b):
    return jbs.sampled_softmax_loss(w, b, y, x, s, v, num_true, sv, hits)

  def sharded(x, w, b):
    return jbs.vocab_parallel_sampled_softmax_loss(w, b, y, x, s, v, num_true, sv, hits,
                                                   mesh=mesh, data_axis=data_axis)

  argnums = (0, 1, 2) if use_bias else (0, 1)
  ref = jax.jit(single)(x, w, b)
  got = jax.jit(sharded)(x, w, b)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  gref = jax.grad(lambda *a: jnp.sum(single(*a) * jnp.arange(1.0, 17.0)), argnums)(x, w, b)
  ggot = jax.jit(jax.grad(lambda *a: jnp.sum(sharded(*a) * jnp.arange(1.0, 17.0)), argnums))(
      x, w, b)
  for a, r in zip(ggot, gref):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_sampled_same_key_and_leading_dims():
  x, w, b, y, _ = _sampled_problem(t=2)
  mesh = _mesh((4, 2), ("data", "vocab"))
  x3, y3 = x.reshape(2, 8, -1), y.reshape(2, 8, 2)
  key = jax.random.key(7)
  ref = jbs.sampled_softmax_loss(w, b, y3, x3, 10, 96, 2, key=key)
  got = jax.jit(lambda x, w, b: jbs.vocab_parallel_sampled_softmax_loss(
      w, b, y3, x, 10, 96, 2, mesh=mesh, data_axis="data", key=key))(x3, w, b)
  assert got.shape == (2, 8)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sampled_presharded_weights():
  x, w, b, y, sv = _sampled_problem(n=8, v=32, s=6)
  mesh = _mesh((8,), ("vocab",))
  w = jax.device_put(w, NamedSharding(mesh, P("vocab", None)))
  b = jax.device_put(b, NamedSharding(mesh, P("vocab")))

  def f(x, w, b):
    return jbs.vocab_parallel_sampled_softmax_loss(w, b, y, x, 6, 32, 1, sv, mesh=mesh)

  out = jax.jit(f)(x, w, b)
  np.testing.assert_allclose(out, jbs.sampled_softmax_loss(w, b, y, x, 6, 32, 1, sv), rtol=1e-5)
  dw = jax.jit(jax.grad(lambda *a: f(*a).sum(), 1))(x, w, b)
  # The gradient of the sharded weights stays sharded on V (no device holds all of it).
  assert dw.sharding.is_equivalent_to(w.sharding, 2)
  np.testing.assert_allclose(
      dw, jax.grad(lambda w: jbs.sampled_softmax_loss(w, b, y, x, 6, 32, 1, sv).sum())(w),
      rtol=1e-5, atol=1e-6)


def test_sampled_bad_label_gives_nan_under_jit():
  x, w, b, y, sv = _sampled_problem()
  mesh = _mesh((8,), ("vocab",))
  y = y.at[2, 0].set(200)
  out = jax.jit(lambda y: jbs.vocab_parallel_sampled_softmax_loss(
      w, b, y, x, 12, 96, 1, sv, mesh=mesh))(y)
  assert np.isnan(out[2]) and np.all(np.isfinite(np.delete(np.asarray(out), 2)))


def test_sampled_errors():
  x, w, b, y, sv = _sampled_problem(v=90)
  mesh = _mesh((8,), ("vocab",))
  f = jbs.vocab_parallel_sampled_softmax_loss
  with pytest.raises(ValueError, match=r"V = 90, which does not divide by the size of mesh axis 'vocab' \(8\)"):
    f(w, b, y, x, 12, 90, 1, sv, mesh=mesh)
  x, w, b, y, sv = _sampled_problem(n=10)
  with pytest.raises(ValueError, match="vocab_axis='model' is not an axis of the mesh"):
    f(w, b, y, x, 12, 96, 1, sv, mesh=mesh, vocab_axis="model")
  with pytest.raises(ValueError, match="data_axis='data' is not an axis of the mesh"):
    f(w, b, y, x, 12, 96, 1, sv, mesh=mesh, data_axis="data")
  with pytest.raises(ValueError, match=r"N = 10, which does not divide by the size of mesh axis 'data' \(4\)"):
    f(w, b, y, x, 12, 96, 1, sv, mesh=_mesh((4, 2), ("data", "vocab")), data_axis="data")
  with pytest.raises(ValueError, match="key must be a jax.random key"):
    f(w, b, y, x, 12, 96, 1, mesh=mesh)
  with pytest.raises(ValueError, match="num_classes must be <= weights.shape"):
    f(w, b, y, x, 12, 100, 1, sv, mesh=mesh)
  with pytest.raises(ValueError, match=r"labels must have shape \(10, 2\)"):
    f(w, b, y, x, 12, 96, 2, sv, mesh=mesh)


# ----------------------------------------------------------------------------
# Adaptive softmax with sharded tails == single-device adaptive_log_softmax_with_loss.
# ----------------------------------------------------------------------------

CUTOFFS = [10, 20, 40, 60, 100]


def _adaptive_problem(n=32, d=8, seed=0, head_bias=True):
  rng = np.random.default_rng(seed)
  head = jnp.asarray(rng.normal(size=(d, 14)), jnp.float32)
  hb = jnp.asarray(rng.normal(size=(14,)), jnp.float32) if head_bias else None
  tails = [(jnp.asarray(rng.normal(size=(d, h)) / np.sqrt(d), jnp.float32),
            jnp.asarray(rng.normal(size=(h, CUTOFFS[i + 1] - CUTOFFS[i])), jnp.float32))
           for i, h in enumerate([4, 3, 2, 2])]
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  # Skewed labels so the shortlist and every cluster get rows.
  y = jnp.asarray(np.concatenate([rng.integers(0, 10, n // 2), rng.integers(10, 100, n - n // 2)]),
                  jnp.int32)
  return x, y, head, hb, tails


@pytest.mark.parametrize("shape,names,data_axis,packed,ignore_index,capacity", helpers.tiered([
    ((8,), ("vocab",), None, False, None, None),       # 4 clusters on 8 shards: 4 idle
    ((8, 1), ("data", "vocab"), "data", True, 3, 16),  # all clusters on one shard
    ((4, 2), ("data", "vocab"), "data", True, 3, 16),
    ((2, 4), ("data", "vocab"), "data", False, None, None),
], fast=(0, 2)))
def test_adaptive_equals_single_device(shape, names, data_axis, packed, ignore_index, capacity):
  x, y, head, hb, tails = _adaptive_problem()
  if ignore_index is not None:
    y = y.at[::7].set(ignore_index)
  mesh = _mesh(shape, names)
  n_shards = shape[-1]

  def single(x, head, hb, tails):
    out, loss = jbs.adaptive_log_softmax_with_loss(x, y, head, tails, CUTOFFS, hb,
                                                   capacity=capacity, ignore_index=ignore_index)
    return loss, out

  def sharded(x, head, hb, tails):
    out, loss = jbs.vocab_parallel_adaptive_log_softmax_with_loss(
        x, y, head, tails, CUTOFFS, hb, mesh=mesh, data_axis=data_axis, capacity=capacity,
        ignore_index=ignore_index)
    return loss, out

  (lref, oref), gref = jax.value_and_grad(single, (0, 1, 2, 3), has_aux=True)(x, head, hb, tails)
  arg = jbs.pack_adaptive_tails(tails, n_shards) if packed else tails
  (lgot, ogot), ggot = jax.jit(jax.value_and_grad(sharded, (0, 1, 2, 3), has_aux=True))(
      x, head, hb, arg)
  if packed:
    assert isinstance(ggot[3], jbs.PackedAdaptiveTails)
    ggot = (*ggot[:3], jbs.unpack_adaptive_tails(ggot[3]))
  np.testing.assert_allclose(ogot, oref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lgot, lref, rtol=1e-5, atol=1e-6)
  for a, r in zip(jax.tree.leaves(ggot), jax.tree.leaves(gref)):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


def test_adaptive_presharded_buffer_leading_dims_and_nan():
  x, y, head, hb, tails = _adaptive_problem(head_bias=False)
  mesh = _mesh((4, 2), ("data", "vocab"))
  packed = jbs.pack_adaptive_tails(tails, 2)
  packed = jax.device_put(packed, NamedSharding(mesh, P("vocab", None)))
  assert packed.buffer.addressable_shards[0].data.shape == (1, packed.buffer.shape[1])
  y = y.at[5].set(100)  # out of range: NaN under jit, never a plausible number
  f = jax.jit(lambda x, y, t: jbs.vocab_parallel_adaptive_log_softmax_with_loss(
      x, y, head, t, CUTOFFS, mesh=mesh, data_axis="data"))
  out, loss = f(x.reshape(4, 8, -1), y.reshape(4, 8), packed)
  assert out.shape == (4, 8) and np.isnan(loss) and np.isnan(out[0, 5])
  ref, _ = jax.jit(lambda y: jbs.adaptive_log_softmax_with_loss(x, y, head, tails, CUTOFFS))(y)
  np.testing.assert_allclose(np.delete(np.asarray(out).ravel(), 5), np.delete(np.asarray(ref), 5),
                             rtol=1e-5, atol=1e-5)


def test_pack_unpack_roundtrip_and_balance():
  _, _, _, _, tails = _adaptive_problem()
  for n_shards in (1, 2, 3, 8):
    packed = jbs.pack_adaptive_tails(tails, n_shards)
    assert packed.buffer.shape[0] == n_shards
    for (p, o), (p2, o2) in zip(tails, jbs.unpack_adaptive_tails(packed)):
      np.testing.assert_array_equal(p, p2)
      np.testing.assert_array_equal(o, o2)
  sizes = [8 * h + h * o for h, o in zip([4, 3, 2, 2], [10, 20, 20, 40])]  # 72, 84, 56, 96
  assert jbs.pack_adaptive_tails(tails, 2).buffer.shape[1] == 72 + 84  # vs 96 + 56
  assert jbs.pack_adaptive_tails(tails, 8).buffer.shape[1] == max(sizes)
  assert sorted(jbs.pack_adaptive_tails(tails, 8).owner) == [0, 1, 2, 3]


def test_adaptive_errors():
  x, y, head, hb, tails = _adaptive_problem(n=10)
  mesh = _mesh((4, 2), ("data", "vocab"))
  f = jbs.vocab_parallel_adaptive_log_softmax_with_loss
  with pytest.raises(ValueError, match="packed for 8 shards but mesh axis 'vocab' has size 2"):
    f(x, y, head, jbs.pack_adaptive_tails(tails, 8), CUTOFFS, mesh=mesh)
  with pytest.raises(ValueError, match="vocab_axis='tails' is not an axis of the mesh"):
    f(x, y, head, tails, CUTOFFS, mesh=mesh, vocab_axis="tails")
  with pytest.raises(ValueError, match=r"N = 10, which does not divide by the size of mesh axis 'data' \(4\)"):
    f(x, y, head, tails, CUTOFFS, mesh=mesh, data_axis="data")
  with pytest.raises(ValueError, match="cutoffs must be"):
    f(x, y, head, tails, [10, 40, 20, 60, 100], mesh=mesh)
  with pytest.raises(ValueError, match="label"):
    f(x, y.at[0].set(100), head, tails, CUTOFFS, mesh=mesh)
  with pytest.raises(TypeError, match="share one dtype"):
    jbs.pack_adaptive_tails([tails[0], (tails[1][0].astype(jnp.bfloat16), tails[1][1])], 2)
  with pytest.raises(ValueError, match="num_shards must be an int >= 1"):
    jbs.pack_adaptive_tails(tails, 0)


@pytest.mark.slow
@pytest.mark.slow
def test_docs_example_runs(capsys):
  """The docs' vocab-parallel usage example is runnable and checks itself."""
  path = os.path.join(helpers.ROOT, "docs", "beyond_one_device.md")
  with open(path) as f:
    text = f.read()
  section = text.split("### Example (2-D data x vocab mesh", 1)[1]
  code = section.split("```python\n", 1)[1].split("```", 1)[0]
  exec(compile(code, path, "exec"), {"__name__": "docs_example"})
  assert capsys.readouterr().out.startswith("ok ")
