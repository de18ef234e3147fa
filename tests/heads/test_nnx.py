"""Flax NNX heads (jax_bigsoftmax.nnx) against their linen twins."""
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import helpers
import jax_bigsoftmax as jbs
from jax_bigsoftmax import nnx as jnnx

D, V, B, T = 8, 24, 3, 5

# (id, linen head, needs custom per-class tables)
CONFIGS = [
    ("full", jbs.FullSoftmaxLoss(num_classes=V, features=D)),
    ("full_options", jbs.FullSoftmaxLoss(num_classes=V, features=D, use_bias=False,
                                         label_smoothing=0.1, reduction="sum", chunk_size=5)),
    ("adaptive", jbs.AdaptiveLogSoftmaxWithLoss(D, V, cutoffs=(4, 10), div_value=2.0)),
    ("adaptive_bias", jbs.AdaptiveLogSoftmaxWithLoss(D, V, cutoffs=(6,), head_bias=True,
                                                     capacity=4)),
    ("hsigmoid", jbs.HSigmoidLoss(feature_size=D, num_classes=V)),
    ("hsigmoid_paddle", jbs.HSigmoidLoss(feature_size=D, num_classes=V, use_bias=False,
                                         paddle_compat=True)),
    ("hsigmoid_huffman", jbs.HSigmoidLoss(feature_size=D, num_classes=V - 1, is_custom=True)),
    ("sampled", jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=6)),
    ("sampled_true2", jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=6,
                                             num_true=2, remove_accidental_hits=False)),
]
IDS = [c[0] for c in CONFIGS]
# The fast tier runs the four heads' default configurations, the full tier every one.
TIERED = helpers.tiered(CONFIGS, fast=(0, 2, 4, 7))


def _data(seed=0, batch=(B, T)):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, batch + (D,))
  y = jax.random.randint(ky, batch, 0, V)
  return x, y


def _huffman():
  counts = np.arange(V, 0, -1) ** 2
  table, code = jbs.huffman_tree(counts)
  return jnp.asarray(table, jnp.int32), jnp.asarray(code, jnp.int32)


def _calls(name, head):
  """(loss fn, nll fn, log_prob fn, predict fn) for a head with the common interface.

  ``head`` is called as ``head(method_name, *args, **kwargs)``, so one list
  serves the linen head (through ``apply``) and the NNX head (a method call).
  """
  if name == "hsigmoid_huffman":
    table, code = _huffman()
    return (lambda x, y: head("__call__", x, y, table[y], code[y]),
            lambda x, y: head("nll", x, y, table[y], code[y]),
            lambda x: head("log_prob", x, table, code),
            lambda x: head("predict", x, table, code))
  if name.startswith("sampled"):
    # the exact (deterministic) loss; the sampled loss is compared separately.
    return (lambda x, y: head("__call__", x, _labels(name, y), deterministic=True),
            lambda x, y: head("nll", x, y),
            lambda x: head("log_prob", x), lambda x: head("predict", x))
  if name.startswith("adaptive"):
    return (lambda x, y: head("__call__", x, y).loss,
            lambda x, y: head("nll", x, y),
            lambda x: head("log_prob", x), lambda x: head("predict", x))
  return (lambda x, y: head("__call__", x, y), lambda x, y: head("nll", x, y),
          lambda x: head("log_prob", x), lambda x: head("predict", x))


def _labels(name, y):
  """[..., 2] labels for num_true=2 (the label and its neighbour)."""
  return jnp.stack([y, (y + 1) % V], axis=-1) if name == "sampled_true2" else y


def _linen_caller(linen_head, params, rngs=None):
  return lambda method, *a, **k: linen_head.apply({"params": params}, *a, method=method,
                                                  rngs=rngs, **k)


def _nnx_caller(head):
  return lambda method, *a, **k: getattr(head, method)(*a, **k)


def _init(linen_head, seed=1):
  x, y = _data()
  if isinstance(linen_head, jbs.HSigmoidLoss) and linen_head.is_custom:
    table, code = _huffman()
    return linen_head.init(jax.random.key(seed), x, y, table[y], code[y])["params"]
  if isinstance(linen_head, jbs.SampledSoftmaxLoss):
    return linen_head.init(jax.random.key(seed), x, y, method="nll")["params"]
  return linen_head.init(jax.random.key(seed), x, y)["params"]


def _close(a, b, rtol=1e-6, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _outputs(calls, x, y):
  return tuple(f(x, y) if f.__code__.co_argcount == 2 else f(x) for f in calls)


def _objective(name, caller, x, y):
  loss, nll = _calls(name, caller)[:2]
  return jnp.sum(loss(x, y)) + 0.5 * jnp.sum(nll(x, y))


@pytest.mark.parametrize("name,linen_head", TIERED, ids=IDS)
def test_from_linen_matches_linen_values_and_gradients(name, linen_head):
  params = _init(linen_head)
  head = jnnx.from_linen(linen_head, {"params": params})
  x, y = _data(seed=2)

  @nnx.jit
  def both(head, params):
    ours = _outputs(_calls(name, _nnx_caller(head)), x, y)
    theirs = _outputs(_calls(name, _linen_caller(linen_head, params)), x, y)
    g_ours = nnx.grad(lambda h: _objective(name, _nnx_caller(h), x, y))(head)
    g_theirs = jax.grad(lambda p: _objective(name, _linen_caller(linen_head, p), x, y))(params)
    return ours, theirs, nnx.to_pure_dict(g_ours), g_theirs

  ours, theirs, g_ours, g_theirs = both(head, params)
  for a, b in zip(ours, theirs):
    _close(a, b)
  assert sorted(g_ours) == sorted(g_theirs) == sorted(params)
  for k in params:
    _close(g_ours[k], g_theirs[k], rtol=1e-5)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_theirs))


@pytest.mark.parametrize("name,linen_head", [c for c in CONFIGS if c[0].startswith("sampled")],
                         ids=[i for i in IDS if i.startswith("sampled")])
def test_sampled_training_loss_matches_linen_with_same_key(name, linen_head):
  params = _init(linen_head)
  x, y = _data(seed=4)
  labels = _labels(name, y)
  head = jnnx.from_linen(linen_head, params)

  @nnx.jit
  def both(head, params, key):
    linen = lambda p, **kw: linen_head.apply({"params": p}, x, labels, **kw)
    sampled_theirs = linen(params, rngs={"sampler": key})
    g_theirs = jax.grad(lambda p: jnp.sum(linen(p, rngs={"sampler": key})))(params)
    g_ours = nnx.grad(lambda h: jnp.sum(h(x, labels, rngs=key)))(head)
    return (head(x, labels, rngs=key), sampled_theirs, nnx.to_pure_dict(g_ours), g_theirs,
            head(x, labels, deterministic=True), linen(params, deterministic=True))

  sampled, want, g_ours, g_theirs, exact_ours, exact = both(head, params, jax.random.key(7))
  _close(sampled, want)
  for k in params:
    _close(g_ours[k], g_theirs[k], rtol=1e-5)
  _close(exact_ours, exact)
  assert not np.allclose(want, exact)  # the sampled loss is not the exact one
  # eval()/train() and nnx.view switch the mode
  head.eval()
  mode = nnx.jit(lambda h: h(x, labels, rngs=jax.random.key(7)))
  _close(mode(head), exact)
  head.train()
  _close(mode(head), want)
  _close(mode(nnx.view(head, deterministic=True)), exact)


def test_sampled_stream_draws_fresh_negatives_and_needs_a_key():
  head = jnnx.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=4,
                                 rngs=nnx.Rngs(0, sampler=5))
  x, y = _data()
  call = nnx.jit(lambda h: h(x, y))  # the stream's counter advances through nnx.jit
  first, second = call(head), call(head)
  assert first.shape == y.shape and not np.array_equal(first, second)
  # same seed, same draws: the stream is reproducible
  again = jnnx.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=4,
                                  rngs=nnx.Rngs(0, sampler=5))
  np.testing.assert_array_equal(call(again), first)
  keyless = jnnx.from_linen(head.linen, jnnx.to_linen_params(head))
  with pytest.raises(ValueError, match="no sampler rng"):
    keyless(x, y)
  exact = nnx.jit(lambda h: (h(x, y, deterministic=True), h.nll(x, y)))(keyless)
  np.testing.assert_array_equal(*exact)
  with pytest.raises(TypeError, match="rngs must be"):
    keyless(x, y, rngs=3)


@pytest.mark.parametrize("name,linen_head", TIERED, ids=IDS)
def test_params_have_the_linen_names_shapes_and_init(name, linen_head):
  kwargs = {f: getattr(linen_head, f) for f in linen_head.__dataclass_fields__
            if f not in ("parent", "name")}
  head = type(jnnx.from_linen(linen_head, _init(linen_head)))(**kwargs, rngs=nnx.Rngs(3))
  ours = jnnx.to_linen_params(head)
  key = nnx.Rngs(3).params()  # the key the constructor hands to the linen setup
  theirs = linen_head.init(key, method=lambda m: m._try_setup())["params"]
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    assert isinstance(getattr(head, k), nnx.Param)
    assert ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype
    np.testing.assert_array_equal(ours[k], theirs[k])


@pytest.mark.parametrize("name,linen_head", TIERED, ids=IDS)
def test_split_merge_and_linen_params_round_trip(name, linen_head):
  params = _init(linen_head)
  head = jnnx.from_linen(linen_head, params)
  graphdef, state = nnx.split(head)
  merged = nnx.merge(graphdef, state)
  x, y = _data(seed=5)
  run = jax.jit(lambda state: _outputs(_calls(name, _nnx_caller(nnx.merge(graphdef, state))),
                                       x, y))
  for a, b in zip(run(nnx.state(merged)), run(state)):
    np.testing.assert_array_equal(a, b)
  back = jnnx.to_linen_params(merged)
  assert sorted(back) == sorted(params)
  for k in params:
    np.testing.assert_array_equal(back[k], params[k])
  # a state changed outside (e.g. by an optimizer) is what merge gives back
  state2 = jax.tree.map(lambda a: a * 2.0, state)
  doubled = jnnx.to_linen_params(nnx.merge(graphdef, state2))
  for k in params:
    np.testing.assert_array_equal(doubled[k], params[k] * 2.0)


@pytest.mark.parametrize("name,linen_head", TIERED, ids=IDS)
def test_vmap_over_a_batch_axis(name, linen_head):
  head = jnnx.from_linen(linen_head, _init(linen_head))
  x, y = _data(seed=6)
  want = nnx.jit(lambda h: _calls(name, _nnx_caller(h))[1](x, y))(head)  # [B, T]

  per_row = nnx.jit(nnx.vmap(lambda h, x, y: _calls(name, _nnx_caller(h))[1](x, y),
                             in_axes=(None, 0, 0)))(head, x, y)
  _close(per_row, want, rtol=1e-5, atol=1e-5)

  graphdef, state = nnx.split(head)
  by_state = jax.jit(jax.vmap(
      lambda state, x, y: _calls(name, _nnx_caller(nnx.merge(graphdef, state)))[1](x, y),
      in_axes=(None, 0, 0)))(state, x, y)
  _close(by_state, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,linen_head", TIERED, ids=IDS)
def test_nnx_jit_optimizer_steps_reduce_the_loss(name, linen_head):
  kwargs = {f: getattr(linen_head, f) for f in linen_head.__dataclass_fields__
            if f not in ("parent", "name")}
  twin = type(jnnx.from_linen(linen_head, _init(linen_head)))
  head = twin(**kwargs, rngs=nnx.Rngs(0, sampler=1))
  optimizer = nnx.Optimizer(head, optax.adam(0.05), wrt=nnx.Param)
  x, y = _data(seed=7, batch=(16,))
  if name.startswith("sampled"):  # train on the sampled loss, judge on the exact one
    train_loss = lambda h: jnp.mean(h(x, _labels(name, y)))
  else:
    train_loss = lambda h: jnp.sum(_calls(name, _nnx_caller(h))[0](x, y))
  exact = lambda h: jnp.mean(_calls(name, _nnx_caller(h))[1](x, y))

  @nnx.jit
  def step(head, optimizer):
    loss, grads = nnx.value_and_grad(train_loss)(head)
    optimizer.update(head, grads)
    return loss

  exact = nnx.jit(exact)
  before = float(exact(head))
  for _ in range(6):
    assert np.isfinite(float(step(head, optimizer)))
  after = float(exact(head))
  assert after < before - 0.1, (before, after)
  assert int(optimizer.step[...]) == 6


def test_sharding_metadata_follows_the_linen_head():
  mesh = jax.make_mesh((4,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])
  init = nn.with_partitioning(jbs.exact._head.default_weight_init, ("vocab", None), mesh=mesh)
  linen_head = jbs.FullSoftmaxLoss(num_classes=V, features=D, weight_init=init)
  head = jnnx.FullSoftmaxLoss(num_classes=V, features=D, weight_init=init, rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(head))
  assert specs["weight"].get_value() == jax.P("vocab", None)
  assert specs["bias"].get_value() == jax.P()
  assert head.weight[...].sharding.spec == jax.P("vocab", None)
  params = jnnx.to_linen_params(head)
  assert isinstance(params["weight"], nn.Partitioned)
  assert nn.get_partition_spec(params)["weight"] == jax.P("vocab", None)
  # boxed linen params load, keep the metadata, and give the linen numbers
  variables = linen_head.init(jax.random.key(0), *_data())
  twin = jnnx.from_linen(linen_head, variables)
  assert twin.weight.get_metadata()["out_sharding"] == ("vocab", None)
  x, y = _data(seed=8)
  _close(twin.nll(x, y), linen_head.apply(variables, x, y, method="nll"))


@pytest.mark.parametrize("twin", [jnnx.FullSoftmaxLoss, jnnx.AdaptiveLogSoftmaxWithLoss,
                                  jnnx.HSigmoidLoss, jnnx.SampledSoftmaxLoss])
def test_constructor_keywords_are_the_linen_attributes(twin):
  linen_fields = [f for f in twin.linen_class.__dataclass_fields__ if f not in ("parent", "name")]
  params = dict(inspect.signature(twin.__init__).parameters)
  params.pop("self")
  assert list(params)[:len(linen_fields)] == linen_fields
  assert params["rngs"].kind == inspect.Parameter.KEYWORD_ONLY
  assert twin.__name__ == twin.linen_class.__name__


def test_from_linen_keeps_a_subclass_configuration_and_methods():
  class Scaled(jbs.FullSoftmaxLoss):
    scale: float = 3.0

    def nll(self, inputs, labels):
      return super().nll(inputs, labels) * self.scale

  linen_head = Scaled(num_classes=V, features=D, scale=2.0)
  params = _init(linen_head)
  head = jnnx.from_linen(linen_head, params)
  assert isinstance(head, jnnx.FullSoftmaxLoss) and head.linen.scale == 2.0
  x, y = _data(seed=9)
  plain = jbs.FullSoftmaxLoss(num_classes=V, features=D).apply({"params": params}, x, y,
                                                               method="nll")
  _close(head.nll(x, y), 2.0 * plain)


def test_sharding_annotation_without_mesh_takes_the_head_mesh():
  """A head with a ``mesh`` attribute (the sharded heads' option) places its NNX params on it."""
  mesh = jax.make_mesh((4,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])

  class WithMesh(jbs.FullSoftmaxLoss):
    mesh: object = None

  init = nn.with_partitioning(jbs.exact._head.default_weight_init, ("vocab", None))
  linen_head = WithMesh(num_classes=V, features=D, weight_init=init, mesh=mesh)
  variables = linen_head.init(jax.random.key(0), *_data())
  head = jnnx.from_linen(linen_head, variables)
  assert head.weight.get_metadata()["mesh"] is mesh
  assert head.weight[...].sharding == jax.NamedSharding(mesh, jax.P("vocab", None))
  x, y = _data(seed=10)
  _close(head.nll(x, y), linen_head.apply(variables, x, y, method="nll"))


def test_errors_name_the_argument():
  linen_head = jbs.FullSoftmaxLoss(num_classes=V, features=D)
  params = _init(linen_head)
  with pytest.raises(TypeError, match="linen_head must be one of"):
    jnnx.from_linen(nn.Dense(3), params)
  with pytest.raises(TypeError, match="params must be a mapping"):
    jnnx.from_linen(linen_head, [params["weight"]])
  with pytest.raises(ValueError, match=r"exactly the parameters .*\['bias', 'weight'\]"):
    jnnx.from_linen(linen_head, {"weight": params["weight"]})
  with pytest.raises(ValueError, match=r"params\['weight'\] must have shape \(24, 8\)"):
    jnnx.from_linen(linen_head, {**params, "weight": params["weight"].T})
  with pytest.raises(TypeError, match="nnx_head must be"):
    jnnx.to_linen_params(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match="needs rngs=nnx.Rngs"):
    jnnx.FullSoftmaxLoss(num_classes=V, features=D)
  # the linen twin's validation, at construction
  with pytest.raises(ValueError, match="num_classes must be >= 2"):
    jnnx.FullSoftmaxLoss(num_classes=1, features=D, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cutoffs should be a sequence"):
    jnnx.AdaptiveLogSoftmaxWithLoss(D, V, cutoffs=(10, 4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_sampled must be in"):
    jnnx.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=V, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="unexpected keyword argument 'feature'"):
    jnnx.HSigmoidLoss(feature=D, num_classes=V, rngs=nnx.Rngs(0))
