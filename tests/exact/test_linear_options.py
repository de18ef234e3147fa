"""linear_cross_entropy's LLM-training options (softcap, z-loss, token weights, aux
outputs, top-k) against float64 references written from the definitions with
dense logits, the one-pass gradient, -inf / NaN edges, and vocab-parallel parity."""
import itertools

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import pytest
from jax.sharding import Mesh

import helpers
import jax_bigsoftmax as jbs


def _problem(n=20, d=6, v=53, seed=0, dtype=np.float64, ignore_every=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(dtype)
  w = (rng.normal(size=(v, d)) * 2 / np.sqrt(d)).astype(dtype)
  b = rng.normal(size=(v,)).astype(dtype)
  y = rng.integers(0, v, size=n)
  if ignore_every:
    y[::ignore_every] = -100
  cw = rng.uniform(0.5, 2.0, size=v).astype(dtype)
  tw = rng.uniform(0.0, 2.0, size=n).astype(dtype)
  return x, w, b, y, cw, tw


def _reference(x, w, b, y, *, cw=None, tw=None, eps=0.0, z_loss=0.0, cap=None,
               reduction="mean"):
  """The definitions with dense logits, in jax.numpy (float64 under x64)."""
  z = x @ w.T + b[None, :]
  if cap is not None:
    z = cap * jnp.tanh(z / cap)
  v = z.shape[-1]
  keep = y != -100
  ys = jnp.where(keep, y, 0)
  lse = jax.nn.logsumexp(z, axis=-1)
  zy = jnp.take_along_axis(z, ys[:, None], axis=-1)[:, 0]
  cwv = jnp.ones((v,), z.dtype) if cw is None else cw
  w_y = cwv[ys]
  ce = (1 - eps) * w_y * (lse - zy) + eps / v * (jnp.sum(cwv) * lse - z @ cwv)
  t = jnp.ones_like(lse) if tw is None else tw
  rows = jnp.where(keep, t * ce + z_loss * w_y * t * lse**2, 0.0)
  if reduction == "none":
    return rows
  if reduction == "sum":
    return jnp.sum(rows)
  return jnp.sum(rows) / jnp.sum(jnp.where(keep, w_y * t, 0.0))


OPTION_SETS = [
    dict(),
    dict(cap=3.0),
    dict(z_loss=1e-2),
    dict(tw=True),
    dict(eps=0.1, cw=True),
    dict(cap=2.0, z_loss=0.05, tw=True),
    dict(cap=4.0, z_loss=1e-3, tw=True, eps=0.2, cw=True),
]


def _kwargs(opts, cw, tw):
  return dict(class_weight=cw if opts.get("cw") else None,
              token_weight=tw if opts.get("tw") else None,
              label_smoothing=opts.get("eps", 0.0), z_loss=opts.get("z_loss", 0.0),
              logit_softcap=opts.get("cap"))


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: "-".join(sorted(o)) or "plain")
@pytest.mark.parametrize("reduction", helpers.tiered(["mean", "sum", "none"], multi=False))
def test_options_match_float64_reference(opts, reduction):
  with jax.enable_x64(True):
    x, w, b, y, cw, tw = (jnp.asarray(a) for a in _problem())
    kw = _kwargs(opts, cw, tw)

    def ours(x, w, b):
      return jbs.linear_cross_entropy(x, w, y, b, reduction=reduction, chunk_size=8, **kw)

    def ref(x, w, b):
      return _reference(x, w, b, y, cw=kw["class_weight"], tw=kw["token_weight"],
                        eps=kw["label_smoothing"], z_loss=kw["z_loss"], cap=kw["logit_softcap"],
                        reduction=reduction)

    cot = (jnp.asarray(np.random.default_rng(1).normal(size=y.shape)) if reduction == "none"
           else jnp.asarray(1.7))
    o1, v1 = jax.vjp(jax.jit(ours), x, w, b)
    o2, v2 = jax.vjp(ref, x, w, b)
    np.testing.assert_allclose(o1, o2, rtol=1e-11, atol=1e-12)
    for g1, g2, name in zip(v1(cot), v2(cot), "xwb"):
      np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_check_grads_with_every_option(reduction):
  with jax.enable_x64(True):
    x, w, b, y, cw, tw = (jnp.asarray(a) for a in _problem(n=7, d=3, v=11))
    kw = _kwargs(dict(cap=3.0, z_loss=0.01, tw=True, eps=0.1, cw=True), cw, tw)
    f = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, reduction=reduction,  # noqa: E731
                                                 chunk_size=4, **kw)
    jax.test_util.check_grads(f, (x, w, b), order=1, modes=("rev",))


def test_aux_outputs_match_definitions():
  with jax.enable_x64(True):
    x, w, b, y, cw, tw = (jnp.asarray(a) for a in _problem())
    for cap, reduction in itertools.product((None, 2.5), ("mean", "sum", "none")):
      loss, aux = jbs.linear_cross_entropy(x, w, y, b, token_weight=tw, z_loss=0.01,
                                           logit_softcap=cap, reduction=reduction,
                                           return_aux=True, chunk_size=8)
      z = x @ w.T + b[None]
      if cap is not None:
        z = cap * jnp.tanh(z / cap)
      lse = jax.nn.logsumexp(z, -1)
      p = jax.nn.softmax(z, -1)
      keep = y != -100
      np.testing.assert_allclose(aux["lse"], lse, rtol=1e-12)
      np.testing.assert_array_equal(aux["predicted"], jnp.argmax(z, -1))
      np.testing.assert_allclose(aux["entropy"], -jnp.sum(p * jnp.log(p), -1), rtol=1e-10)
      num = jnp.sum(jnp.where(keep, tw, 0.0))
      np.testing.assert_allclose(aux["num_tokens"], num, rtol=1e-12)
      zrows = jnp.where(keep, 0.01 * tw * lse**2, 0.0)
      want_z = {"none": zrows, "sum": jnp.sum(zrows), "mean": jnp.sum(zrows) / num}[reduction]
      np.testing.assert_allclose(aux["z_loss"], want_z, rtol=1e-11)
      ref = _reference(x, w, b, y, tw=tw, z_loss=0.01, cap=cap, reduction=reduction)
      np.testing.assert_allclose(loss, ref, rtol=1e-11)


def test_aux_num_tokens_normalises_gradient_accumulation():
  """Sum losses of micro-batches, divide by the summed num_tokens == one big mean."""
  x, w, b, y, _, tw = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a)
                       for a in _problem(n=24))
  full = jbs.linear_cross_entropy(x, w, y, b, token_weight=tw)
  parts = [jbs.linear_cross_entropy(x[i:i + 8], w, y[i:i + 8], b, token_weight=tw[i:i + 8],
                                    reduction="sum", return_aux=True) for i in (0, 8, 16)]
  total = sum(p[0] for p in parts) / sum(p[1]["num_tokens"] for p in parts)
  np.testing.assert_allclose(total, full, rtol=1e-5)


def test_plain_forward_does_not_run_the_gradient_pass():
  """Without differentiation the forward is the vocabulary walk (1 matmul)."""
  x, w, b, y, _, _ = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a)
                      for a in _problem(n=64, v=512))
  f = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, chunk_size=64)  # noqa: E731
  fwd = str(jax.make_jaxpr(f)(x, w, b))
  both = str(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, w, b))
  assert fwd.count("dot_general") == 1
  assert both.count("dot_general") == 3  # logits, d inputs, d weight: no recompute


@pytest.mark.slow
def test_minus_inf_logits_are_exact():
  """Banned classes (bias -inf), including a whole chunk or shard of them."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  w = jnp.zeros((4, 4), jnp.float32)
  b = jnp.array([-jnp.inf, -jnp.inf, 0.0, 0.0])
  y = jnp.array([2, 3, 2])
  want = jnp.log(2.0)
  for chunk in (1, 2, 3, 4):
    for reduction in ("mean", "none"):
      f = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, chunk_size=chunk,  # noqa: B023
                                                   reduction=reduction)  # noqa: B023
      out, vjp = jax.vjp(f, x, w, b)
      np.testing.assert_allclose(out, want if reduction == "mean" else jnp.full((3,), want),
                                 rtol=1e-6)
      for g in vjp(jnp.ones_like(out)):
        assert np.isfinite(g).all()
      _, aux = jbs.linear_cross_entropy(x, w, y, b, chunk_size=chunk, return_aux=True)
      np.testing.assert_allclose(aux["entropy"], jnp.full((3,), want), rtol=1e-6)
  mesh = Mesh(np.array(jax.devices()[:2]), ("vocab",))
  out = jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh)
  np.testing.assert_allclose(out, want, rtol=1e-6)
  g = jax.grad(lambda w: jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh))(w)
  assert np.isfinite(g).all()


@pytest.mark.parametrize("bad", [np.nan, pytest.param(np.inf, marks=pytest.mark.slow),
                                 pytest.param(-np.inf, marks=pytest.mark.slow)])
def test_nan_and_inf_at_ignored_positions_are_harmless(bad):
  x, w, b, y, _, _ = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a)
                      for a in _problem(n=12, v=40, ignore_every=3))
  x_bad = x.at[0].set(bad)  # y[0] == -100
  for reduction in ("mean", "sum", "none"):
    f = lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b, reduction=reduction,  # noqa: B023
                                                 chunk_size=16, z_loss=1e-3)
    out, vjp = jax.vjp(f, x_bad, w, b)
    ref, ref_vjp = jax.vjp(f, x.at[0].set(0.0), w, b)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    for g, gr in zip(vjp(jnp.ones_like(out)), ref_vjp(jnp.ones_like(out))):
      np.testing.assert_allclose(g, gr, rtol=1e-5, atol=1e-7)
  head = jbs.FullSoftmaxLoss(num_classes=40, features=6)
  params = head.init(jax.random.key(0), x, y)
  loss, g = jax.value_and_grad(lambda p: head.apply(p, x_bad, y))(params)
  assert np.isfinite(loss) and all(np.isfinite(a).all() for a in jax.tree.leaves(g))


def test_argmax_nan_semantics_follow_jnp_argmax():
  x = jnp.ones((3, 2))
  w = jnp.asarray(np.random.default_rng(0).normal(size=(10, 2)), jnp.float32)
  b = jnp.zeros((10,)).at[7].set(jnp.nan)
  b = jnp.stack([b, b.at[2].set(jnp.nan), jnp.zeros((10,))])
  for row in range(3):
    z = x[row:row + 1] @ w.T + b[row][None]
    want = jnp.argmax(z, -1)
    for chunk in (3, 4, 10):
      np.testing.assert_array_equal(jbs.linear_argmax(x[row:row + 1], w, b[row], chunk_size=chunk),
                                    want)
      _, aux = jbs.linear_cross_entropy(x[row:row + 1], w, jnp.array([0]), b[row],
                                        chunk_size=chunk, return_aux=True)
      np.testing.assert_array_equal(aux["predicted"], want)


@pytest.mark.parametrize("chunk,k", [(4, 1), (4, 5), (6, 6), (7, 3), (40, 8), (None, 40)])
def test_top_k_equals_lax_top_k_with_ties(chunk, k):
  rng = np.random.default_rng(0)
  # Integer-valued weights: many exact ties, across chunk boundaries too.
  x = jnp.asarray(rng.integers(-2, 3, size=(2, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.integers(-2, 3, size=(40, 3)), jnp.float32)
  for cap in (None, 1.5):
    lp, ids = jbs.linear_top_k(x, w, k=k, logit_softcap=cap, chunk_size=chunk)
    z = x @ w.T
    if cap is not None:
      z = cap * jnp.tanh(z / cap)
    want_lp, want_ids = jax.lax.top_k(jax.nn.log_softmax(z, -1), k)
    assert lp.shape == ids.shape == (2, 5, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-6)


def test_top_k_errors():
  x, w = jnp.ones((2, 3)), jnp.ones((5, 3))
  for k in (0, 6, 2.0, True):
    with pytest.raises(ValueError, match="k must be"):
      jbs.linear_top_k(x, w, k=k)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda a: jbs.linear_cross_entropy(*a, logit_softcap=0.0), ValueError, "logit_softcap"),
    (lambda a: jbs.linear_cross_entropy(*a, logit_softcap=-1.0), ValueError, "logit_softcap"),
    (lambda a: jbs.linear_cross_entropy(*a, z_loss=-1.0), ValueError, "z_loss"),
    (lambda a: jbs.linear_cross_entropy(*a, z_loss=float("nan")), ValueError, "z_loss"),
    (lambda a: jbs.linear_cross_entropy(*a, token_weight=jnp.ones((3,))), ValueError,
     "token_weight"),
    (lambda a: jbs.linear_cross_entropy(*a, token_weight=jnp.ones((4,), jnp.int32)), TypeError,
     "token_weight"),
])
def test_option_errors(call, exc, pattern):
  args = (jnp.ones((4, 3)), jnp.ones((5, 3)), jnp.array([0, 1, 2, 3]))
  with pytest.raises(exc, match=pattern):
    call(args)


def test_bf16_with_every_option_accumulates_in_float32():
  x, w, b, y, cw, tw = _problem(n=32, d=16, v=300, dtype=np.float32)
  kw = dict(token_weight=jnp.asarray(tw), z_loss=1e-3, logit_softcap=5.0, label_smoothing=0.1)
  ref = jbs.linear_cross_entropy(jnp.asarray(x), jnp.asarray(w), jnp.asarray(y), jnp.asarray(b),
                                 **kw)
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
  out, g = jax.value_and_grad(lambda x: jbs.linear_cross_entropy(
      x, bf(w), jnp.asarray(y), bf(b), chunk_size=64, **kw))(bf(x))
  assert out.dtype == jnp.float32 and g.dtype == jnp.bfloat16
  np.testing.assert_allclose(out, ref, rtol=3e-2)


@pytest.mark.parametrize("shape,names,data_axis", [
    ((8,), ("vocab",), None),
    ((4, 2), ("data", "vocab"), "data"),
])
@pytest.mark.parametrize("reduction", helpers.tiered(["mean", "none"], multi=False))
def test_vocab_parallel_equals_single_device_for_every_option(shape, names, data_axis, reduction):
  x, w, b, y, cw, tw = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a)
                        for a in _problem(n=32, d=8, v=96))
  mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
  kw = dict(class_weight=cw, token_weight=tw, label_smoothing=0.1, z_loss=1e-2,
            logit_softcap=3.0, reduction=reduction, chunk_size=5)

  def single(x, w, b):
    loss, aux = jbs.linear_cross_entropy(x, w, y, b, return_aux=True, **kw)
    return jnp.sum(loss), aux

  def sharded(x, w, b):
    loss, aux = jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh, data_axis=data_axis,
                                                 return_aux=True, **kw)
    return jnp.sum(loss), aux

  ref = jax.value_and_grad(single, argnums=(0, 1, 2), has_aux=True)(x, w, b)
  got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2), has_aux=True))(x, w, b)
  for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-6)


def test_full_head_softcap_and_z_loss():
  x, w, b, y, _, _ = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a)
                      for a in _problem(n=10, d=6, v=30))
  head = jbs.FullSoftmaxLoss(num_classes=30, features=6, z_loss=1e-2, logit_softcap=2.0)
  params = {"params": {"weight": w, "bias": b}}
  np.testing.assert_allclose(
      head.apply(params, x, y),
      jbs.linear_cross_entropy(x, w, y, b, z_loss=1e-2, logit_softcap=2.0), rtol=1e-6)
  lp = head.apply(params, x, method=head.log_prob)
  z = 2.0 * jnp.tanh((x @ w.T + b[None]) / 2.0)
  np.testing.assert_allclose(lp, jax.nn.log_softmax(z, -1), rtol=1e-5, atol=1e-6)
  nll = head.apply(params, x, y, method=head.nll)
  keep = y != -100
  want = jnp.where(keep, -jnp.take_along_axis(lp, jnp.where(keep, y, 0)[:, None], -1)[:, 0], 0)
  np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-6)
