"""SampledSoftmaxLoss Flax head: sampled training loss, exact eval, head interface."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax_bigsoftmax as jbs
from jax_bigsoftmax.sampled._head import SampledSoftmax

V, D = 40, 6


@functools.lru_cache(maxsize=None)
def _params(num_true):
  head = jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=8, num_true=num_true)
  x = jnp.ones((2, 3, D))
  y = jnp.zeros((2, 3) if num_true == 1 else (2, 3, num_true), jnp.int32)
  params = jax.jit(lambda k: head.init(k, x, y, deterministic=True))(jax.random.key(0))
  # non-trivial bias so that the bias path is exercised
  params["params"]["bias"] = jnp.asarray(np.random.RandomState(1).randn(V) * 0.3, jnp.float32)
  return head, params


def _setup(num_true=1, shape=(2, 3), seed=0):
  head, params = _params(num_true)
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(*shape, D), jnp.float32)
  lab_shape = shape if num_true == 1 else shape + (num_true,)
  y = jnp.asarray(rng.randint(0, V, lab_shape))
  return head, params, x, y


def _exact(params, x, y_T):
  w, b = params["params"]["weight"], params["params"]["bias"]
  logp = jax.nn.log_softmax(jnp.einsum("...d,vd->...v", x, w) + b[None, None, :], axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, y_T, axis=-1), axis=-1)


def test_params_and_training_loss_is_tf_sampled_softmax(monkeypatch):
  head, params, x, y = _setup()
  assert params["params"]["weight"].shape == (V, D)
  assert params["params"]["bias"].shape == (V,)
  seen = []
  real = SampledSoftmax.training_loss

  def spy(*args, **kw):
    seen.append((args, kw))
    return real(*args, **kw)

  monkeypatch.setattr(SampledSoftmax, "training_loss", staticmethod(spy))
  key = jax.random.key(3)

  @jax.jit
  def run(params, x, y):
    out = head.apply(params, x, y, rngs={"sampler": key})
    return out, seen[-1][1]["key"]  # the key the head drew from the "sampler" stream

  out, used_key = run(params, x, y)
  assert out.shape == (2, 3)
  w, b = params["params"]["weight"], params["params"]["bias"]
  # the head's numbers are the functional loss with a key from the "sampler" stream
  want = jax.jit(lambda k: real(w, b, y.reshape(-1, 1), x.reshape(-1, D), 8, V, 1, None, True,
                                key=k))(used_key)
  np.testing.assert_allclose(out.reshape(-1), want, rtol=1e-6)
  monkeypatch.undo()
  f = jax.jit(lambda p, x, y, k: head.apply(p, x, y, rngs={"sampler": k}))
  np.testing.assert_allclose(f(params, x, y, key), out, rtol=1e-6)
  np.testing.assert_array_equal(f(params, x, y, key), f(params, x, y, key))
  assert not np.allclose(out, f(params, x, y, jax.random.key(4)))
  g = jax.jit(jax.grad(lambda p: jnp.mean(f(p, x, y, key))))(params)
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(g))


@pytest.mark.parametrize("num_true", [1, 3])
def test_deterministic_is_exact_full_softmax(num_true):
  head, params, x, y = _setup(num_true)
  out = jax.jit(lambda p: head.apply(p, x, y, deterministic=True))(params)
  y_T = y[..., None] if num_true == 1 else y
  np.testing.assert_allclose(out, _exact(params, x, y_T), rtol=2e-5, atol=1e-6)
  if num_true == 1:  # labels [..., 1] are accepted too
    out1 = jax.jit(lambda p: head.apply(p, x, y[..., None], deterministic=True))(params)
    np.testing.assert_allclose(out1, out, rtol=1e-6)


def test_nll_log_prob_predict():
  head, params, x, y = _setup()
  nll = jax.jit(lambda p: head.apply(p, x, y, method=head.nll))(params)
  lp = jax.jit(lambda p: head.apply(p, x, method=head.log_prob))(params)
  pred = jax.jit(lambda p: head.apply(p, x, method=head.predict))(params)
  assert nll.shape == (2, 3) and lp.shape == (2, 3, V) and pred.shape == (2, 3)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(lp, y[..., None], -1)[..., 0], rtol=2e-5)
  np.testing.assert_array_equal(pred, jnp.argmax(lp, -1))
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_properties_head_interface(seed, scale):
  head, params, x, y = _setup(seed=seed)
  x = x * scale
  lp, nll, pred = _interface(params, x, y)
  np.testing.assert_allclose(jax.scipy.special.logsumexp(lp, -1), 0.0, atol=1e-4)
  np.testing.assert_allclose(nll, -jnp.take_along_axis(lp, y[..., None], -1)[..., 0],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(pred, jnp.argmax(lp, -1))


@jax.jit
def _interface(params, x, y):
  head = jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=8)
  return (head.apply(params, x, method=head.log_prob), head.apply(params, x, y, method=head.nll),
          head.apply(params, x, method=head.predict))


def test_ignore_index_rows_give_zero_in_both_modes():
  head, params, x, y = _setup()
  y = y.at[0, 1].set(-100)
  key = jax.random.key(0)
  f = jax.jit(lambda p, det: head.apply(p, x, y, deterministic=det, rngs={"sampler": key}),
              static_argnums=1)
  for det in (False, True):
    out = f(params, det)
    assert out[0, 1] == 0.0 and np.isfinite(out).all()
    g = jax.jit(jax.grad(lambda xx: head.apply(params, xx, y, deterministic=det,
                                               rngs={"sampler": key})[0, 1]))(x)
    assert np.all(g == 0.0)


def test_head_errors():
  x, y = jnp.ones((4, D)), jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match="num_sampled must be in"):
    jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=V).init(
        jax.random.key(0), x, y, deterministic=True)
  head = jbs.SampledSoftmaxLoss(num_classes=V, features=D, num_sampled=5, num_true=2)
  with pytest.raises(ValueError, match=r"labels must have shape \(4, 2\)"):
    head.init(jax.random.key(0), x, y, deterministic=True)
  head1, params = _params(1)
  with pytest.raises(Exception, match="sampler"):  # no "sampler" rng stream given
    jax.jit(lambda p: head1.apply(p, x, y))(params)
