"""Vocabulary-sharded Flax heads (``mesh``/``vocab_axis``/``data_axis``) == unsharded heads.

Values and gradients of ``__call__``, ``nll``, ``log_prob`` and ``predict`` on
the 8 CPU devices of tests/conftest.py, on a 1-D vocab mesh and a 2-D
data x vocab mesh, with vocabularies that do and do not divide by the mesh
axis. The reference is the unsharded head on the same params (itself tested
against torch / Paddle / TF fixtures).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jax_bigsoftmax as jbs

MESHES = {
    "model8": (dict(shape=(8,), names=("model",)), dict(vocab_axis="model")),
    "data2_model4": (dict(shape=(2, 4), names=("data", "model")),
                     dict(vocab_axis="model", data_axis="data")),
}


def make_mesh(name):
  m, axes = MESHES[name]
  auto = (jax.sharding.AxisType.Auto,) * len(m["names"])
  return jax.make_mesh(m["shape"], m["names"], axis_types=auto), axes


def place(params, sharded_head, mesh, *args, **kwargs):
  """Params placed as ``nn.get_partition_spec`` of the sharded head's init says."""
  boxed = jax.eval_shape(lambda: sharded_head.init(jax.random.key(0), *args, **kwargs))["params"]
  specs = nn.get_partition_spec(boxed)
  return jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


def tree_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def check_methods(plain, sharded, params, sparams, x, y, *, call_kwargs=None, rngs=None,
                  vocab, call_labels=None):
  """nll / __call__ / log_prob / predict and their gradients agree under jit."""
  call_kwargs = call_kwargs or {}
  yc = y if call_labels is None else call_labels

  def run(head, p):
    nll = head.apply({"params": p}, x, y, method=head.nll)
    out = head.apply({"params": p}, x, yc, rngs=rngs, **call_kwargs)
    logp = head.apply({"params": p}, x, method=head.log_prob)
    pred = head.apply({"params": p}, x, method=head.predict)
    return nll, out, logp, pred

  def loss(head, p, x):
    nll = head.apply({"params": p}, x, y, method=head.nll)
    out = head.apply({"params": p}, x, yc, rngs=rngs, **call_kwargs)
    out = out.loss if isinstance(out, jbs.ASMOutput) else out
    return jnp.sum(nll * jnp.linspace(0.5, 1.5, nll.size).reshape(nll.shape)) + jnp.sum(out)

  ref = jax.jit(lambda p: run(plain, p))(params)
  got = jax.jit(lambda p: run(sharded, p))(sparams)
  tree_close(ref[:3], got[:3], rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(ref[3], got[3])
  assert got[2].shape == x.shape[:-1] + (vocab,)
  # log_prob comes back sharded on V: no device holds the whole [..., V].
  if vocab % sharded.mesh.shape[sharded.vocab_axis] == 0:
    assert got[2].sharding.shard_shape(got[2].shape)[-1] < vocab
  g_ref = jax.jit(jax.grad(lambda p, x: loss(plain, p, x), argnums=(0, 1)))(params, x)
  g_got = jax.jit(jax.grad(lambda p, x: loss(sharded, p, x), argnums=(0, 1)))(sparams, x)
  tree_close(g_ref, g_got, rtol=1e-4, atol=1e-5)
  return g_got


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name,vocab,use_bias", [("model8", 64, True),
                                                      ("data2_model4", 40, False)])
def test_full_head(mesh_name, vocab, use_bias):
  mesh, axes = make_mesh(mesh_name)
  x = jax.random.normal(jax.random.key(1), (4, 3, 16))
  y = jax.random.randint(jax.random.key(2), (4, 3), 0, vocab).at[0, 0].set(-100)
  plain = jbs.FullSoftmaxLoss(vocab, 16, use_bias=use_bias)
  sharded = jbs.FullSoftmaxLoss(vocab, 16, use_bias=use_bias, mesh=mesh, **axes)
  params = plain.init(jax.random.key(0), x, y)["params"]
  boxed = sharded.init(jax.random.key(0), x, y)["params"]
  assert nn.get_partition_spec(boxed)["weight"] == P("model", None)
  tree_close(params, nn.unbox(boxed), rtol=0, atol=0)  # same names, shapes and values
  sparams = place(params, sharded, mesh, x, y)
  grads = check_methods(plain, sharded, params, sparams, x, y, vocab=vocab)
  assert grads[0]["weight"].sharding.spec[0] == "model"


def test_full_head_label_smoothing_and_errors():
  mesh, axes = make_mesh("data2_model4")
  x = jax.random.normal(jax.random.key(1), (8, 16))
  y = jax.random.randint(jax.random.key(2), (8,), 0, 64)
  kw = dict(label_smoothing=0.1, reduction="sum")
  plain = jbs.FullSoftmaxLoss(64, 16, **kw)
  params = plain.init(jax.random.key(0), x, y)["params"]
  sharded = jbs.FullSoftmaxLoss(64, 16, mesh=mesh, **axes, **kw)
  np.testing.assert_allclose(sharded.apply({"params": params}, x, y),
                             plain.apply({"params": params}, x, y), rtol=1e-5)
  odd = jbs.FullSoftmaxLoss(30, 16, mesh=mesh, **axes)
  with pytest.raises(ValueError, match="weight has 30 classes, which does not divide by the size"
                                       " of mesh axis 'model' \\(4\\)"):
    odd.init(jax.random.key(0), x, y)
  with pytest.raises(TypeError, match="vocab_axis='model' needs mesh"):
    jbs.FullSoftmaxLoss(64, 16, vocab_axis="model").init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="vocab_axis='vocab' is not an axis of the mesh"):
    jbs.FullSoftmaxLoss(64, 16, mesh=mesh, vocab_axis="vocab").init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="data_axis='data' needs vocab_axis"):
    jbs.FullSoftmaxLoss(64, 16, mesh=mesh, data_axis="data").init(jax.random.key(0), x, y)
  explicit = jax.make_mesh((2, 4), ("data", "model"),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  with pytest.raises(ValueError, match="mesh must have Auto axes"):
    jbs.FullSoftmaxLoss(64, 16, mesh=explicit, vocab_axis="model").init(jax.random.key(0), x, y)
  with pytest.raises(ValueError, match="must differ"):
    jbs.FullSoftmaxLoss(64, 16, mesh=mesh, vocab_axis="model",
                        data_axis="model").init(jax.random.key(0), x, y)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name,vocab,num_true", [("data2_model4", 64, 1),
                                                      ("model8", 48, 2)])
def test_sampled_head(mesh_name, vocab, num_true):
  mesh, axes = make_mesh(mesh_name)
  x = jax.random.normal(jax.random.key(1), (4, 2, 16))
  y = jax.random.randint(jax.random.key(2), (4, 2) + ((num_true,) if num_true > 1 else ()),
                         0, vocab)
  plain = jbs.SampledSoftmaxLoss(vocab, 16, 12, num_true=num_true)
  sharded = jbs.SampledSoftmaxLoss(vocab, 16, 12, num_true=num_true, mesh=mesh, **axes)
  params = plain.init(jax.random.key(0), x, y, deterministic=True)["params"]
  sparams = place(params, sharded, mesh, x, y, deterministic=True)
  rngs = {"sampler": jax.random.key(7)}
  y_nll = y if num_true == 1 else y[..., 0]
  for det in (False, True):  # the sampled training loss, then the exact one
    ref = jax.jit(lambda p: plain.apply({"params": p}, x, y, deterministic=det, rngs=rngs))(params)
    got = jax.jit(lambda p: sharded.apply({"params": p}, x, y, deterministic=det,
                                          rngs=rngs))(sparams)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
  check_methods(plain, sharded, params, sparams, x, y_nll, vocab=vocab,
                call_kwargs=dict(deterministic=True), call_labels=y)
  g = lambda head, p: jax.jit(jax.grad(lambda p: jnp.sum(
      head.apply({"params": p}, x, y, rngs=rngs))))(p)
  tree_close(g(plain, params), g(sharded, sparams), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name,n_classes,cutoffs,head_bias", [
    ("data2_model4", 62, (6, 22), False), ("model8", 61, (5, 21), True)])
def test_adaptive_head(mesh_name, n_classes, cutoffs, head_bias):
  mesh, axes = make_mesh(mesh_name)
  x = jax.random.normal(jax.random.key(1), (4, 4, 16))
  y = jax.random.randint(jax.random.key(2), (4, 4), 0, n_classes)
  kw = dict(div_value=2.0, head_bias=head_bias)
  plain = jbs.AdaptiveLogSoftmaxWithLoss(16, n_classes, cutoffs, **kw)
  sharded = jbs.AdaptiveLogSoftmaxWithLoss(16, n_classes, cutoffs, mesh=mesh, **axes, **kw)
  params = plain.init(jax.random.key(0), x, y)["params"]
  boxed = sharded.init(jax.random.key(0), x, y)["params"]
  specs = nn.get_partition_spec(boxed)
  assert specs["tail_0_out"] == specs["tail_1_out"] == P(None, "model")
  assert specs["tail_0_proj"] == P()
  # 6 + 2 head columns divide by 4; 5 + 2 do not divide by 8: replicated, padded inside.
  assert specs["head_weight"] == (P(None, "model") if n_classes == 62 else P())
  sparams = place(params, sharded, mesh, x, y)
  check_methods(plain, sharded, params, sparams, x, y, vocab=n_classes)
  # nll with ignore_index and a mask: 0 there, the same elsewhere.
  yi = y.at[0, :2].set(-100)
  mask = jnp.ones(y.shape, bool).at[1, 1].set(False)
  f = lambda head, p: head.apply({"params": p}, x, yi, mask=mask, method=head.nll)
  ref, got = f(plain, params), jax.jit(lambda p: f(sharded, p))(sparams)
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
  assert float(got[0, 0]) == 0.0 and float(got[1, 1]) == 0.0


@pytest.mark.slow
def test_adaptive_head_bad_target():
  mesh, axes = make_mesh("model8")
  x = jnp.ones((4, 16))
  sharded = jbs.AdaptiveLogSoftmaxWithLoss(16, 64, (8, 24), mesh=mesh, **axes)
  params = sharded.init(jax.random.key(0), x, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match=r"target must lie in \[0, 64\)"):
    sharded.apply(params, x, jnp.array([0, 1, 64, 2]))
  out = jax.jit(lambda y: sharded.apply(params, x, y).output)(jnp.array([0, 1, 64, 2]))
  out = np.asarray(out)
  assert np.isnan(out[2]) and np.isfinite(out[[0, 1, 3]]).all()


def test_jit_out_shardings_place_vocab_params_sharded():
  """``nn.get_partition_spec`` + ``jax.jit(out_shardings=...)``: each device holds V/P rows."""
  mesh, axes = make_mesh("data2_model4")
  head = jbs.FullSoftmaxLoss(64, 16, mesh=mesh, **axes)
  x, y = jnp.ones((8, 16)), jnp.zeros((8,), jnp.int32)
  init = lambda: head.init(jax.random.key(0), x, y)
  shardings = nn.get_sharding(jax.eval_shape(init), mesh)
  params = jax.jit(init, out_shardings=shardings)()["params"]
  w = params["weight"].value
  assert w.sharding.shard_shape(w.shape) == (16, 16)
  assert {s.data.shape for s in w.addressable_shards} == {(16, 16)}
