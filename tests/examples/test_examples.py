"""Smoke and behaviour tests of the examples: LM trainer (every head), text VAE.

Tiny configs on a tiny synthetic corpus (plus one run on the default
standard-library corpus), a few steps each. The 8 CPU devices come from
tests/conftest.py.
"""
import json
import math
import os
import subprocess
import sys

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, load_config, tiny_lm, tiny_vae

from examples import data, heads  # noqa: E402
from examples.lm import train as lm_train  # noqa: E402
from examples.vae import models  # noqa: E402
from examples.vae import train as vae_train  # noqa: E402

pytestmark = pytest.mark.slow


HEAD_CASES = [("full", "default"), ("adaptive", "default"), ("hsigmoid", "default"),
              ("hsigmoid", "huffman"), ("sampled", "default")]




# ------------------------------------------------------------------ corpus


def test_default_corpus_is_deterministic_and_frequency_sorted():
  corpus = data.cached_corpus("")
  sizes = {s: sum(len(t) + 1 for t in corpus[s]) for s in data.SPLITS}
  assert sizes["train"] > 1_000_000 and sizes["valid"] > 10_000 and sizes["test"] > 10_000
  assert sizes["train"] > 10 * sizes["valid"]
  again = data.load_stdlib_corpus()
  assert again["valid"][:50] == corpus["valid"][:50] and len(again["test"]) == len(corpus["test"])
  vocab = data.build_vocab(corpus["train"])
  assert len(vocab) > 20_000
  assert np.all(np.diff(vocab.counts) <= 0) and vocab.counts.min() >= 1
  assert {data.EOS, data.UNK} <= set(vocab.words)
  assert data.tokenize_python_line("def f(x): return x**2  # sq") == [
      "def", "f", "(", "x", ")", ":", "return", "x", "*", "*", "2", "#", "sq"]


def test_vocab_cap_maps_rare_words_to_unk(corpus_dir):
  corpus = data.load_corpus(corpus_dir)
  vocab = data.build_vocab(corpus["train"], max_size=50)
  assert len(vocab) == 50
  stream = data.encode_stream(vocab, corpus["train"])
  assert stream.max() < 50 and np.sum(stream == vocab.unk_id) > 0
  assert np.sum(stream == vocab.eos_id) == len(corpus["train"])


def test_eval_batches_cover_every_target_once():
  stream = np.arange(50, dtype=np.int32)
  batches = lm_train.eval_batches(stream, batch_size=4, seq_len=8)
  targets = np.concatenate([b["targets"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(targets, np.arange(1, 50))
  inputs = np.concatenate([b["inputs"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(inputs, np.arange(0, 49))


# --------------------------------------------------------------- LM runs


@pytest.mark.parametrize("head,tree", HEAD_CASES)
def test_lm_smoke_every_head(corpus_dir, tmp_path, head, tree):
  config = tiny_lm(corpus_dir, head=head, hsigmoid_tree=tree)
  out = lm_train.train_and_evaluate(config, str(tmp_path))
  assert math.isfinite(out["valid_ppl"]) and 1.0 < out["valid_ppl"] < 10 * 302
  assert math.isfinite(out["test_ppl"])
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3]
  assert (tmp_path / "metrics.png").stat().st_size > 1000
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  check_eval_is_exact(config, out["state"]["params"])


def test_lm_tied_embeddings(corpus_dir, tmp_path):
  config = tiny_lm(corpus_dir, tie_embeddings=True)
  out = lm_train.train_and_evaluate(config, str(tmp_path))
  params = out["state"]["params"]
  assert "head" not in params and "tied_bias" in params  # one [V, D] table, no separate head
  assert math.isfinite(out["valid_ppl"])
  check_eval_is_exact(config, params)
  with pytest.raises(ValueError, match="tie_embeddings"):
    lm_train.check_config(tiny_lm(corpus_dir, tie_embeddings=True, head="adaptive"))


def check_eval_is_exact(config, params):
  """The eval NLL equals -log_prob[label]; log_prob is normalised; predict is its arg-max."""
  vocab, streams = lm_train.load_data(config)
  model, _, _ = lm_train.build(config, vocab)
  b = lm_train.train_batch(streams["valid"], 0, batch_size=4, seq_len=8, seed=0)
  nll, logp, pred = jax.jit(lambda p: (
      model.apply({"params": p}, b["inputs"], b["targets"], train=False),
      model.apply({"params": p}, b["inputs"], method=model.log_prob),
      model.apply({"params": p}, b["inputs"], method=model.predict)))(params)
  assert logp.shape == (4, 8, len(vocab))
  np.testing.assert_allclose(jax.nn.logsumexp(logp, -1), 0.0, atol=1e-4)
  gathered = -jnp.take_along_axis(logp, jnp.asarray(b["targets"])[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, gathered, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      np.take_along_axis(np.asarray(logp), np.asarray(pred)[..., None], -1)[..., 0],
      np.asarray(logp).max(-1), atol=1e-5)


def test_lm_transformer_smoke(corpus_dir, tmp_path):
  config = tiny_lm(corpus_dir, model="transformer", head="full")
  out = lm_train.train_and_evaluate(config, str(tmp_path))
  assert math.isfinite(out["valid_ppl"]) and out["valid_ppl"] > 1.0


def _params_leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_lm_resume_gives_identical_continuation(corpus_dir, tmp_path):
  """16 steps straight == 8 steps, stop, resume to 16 (params, losses bit for bit); it learns."""
  cfg = lambda n: tiny_lm(corpus_dir, num_train_steps=n, checkpoint_every_steps=8,
                          eval_every_steps=8, learning_rate=1e-2, dropout_rate=0.0)
  straight = lm_train.train_and_evaluate(cfg(16), str(tmp_path / "a"))
  lm_train.train_and_evaluate(cfg(8), str(tmp_path / "b"))
  resumed = lm_train.train_and_evaluate(cfg(16), str(tmp_path / "b"))
  for x, y in zip(_params_leaves(straight["state"]), _params_leaves(resumed["state"])):
    np.testing.assert_array_equal(x, y)
  loss = lambda out: [(r["step"], r["train_loss"]) for r in out["records"] if "train_loss" in r]
  assert loss(straight) == loss(resumed)
  assert straight["valid_ppl"] == resumed["valid_ppl"]
  ppl = [r["valid_ppl"] for r in straight["records"] if "valid_ppl" in r]
  assert ppl[1] < ppl[0] < 297  # learns: below the uniform perplexity, and improving


@pytest.mark.parametrize("head", ["adaptive", "sampled"])
def test_lm_one_vs_eight_devices(corpus_dir, tmp_path, head):
  assert jax.device_count() == 8
  runs = {n: lm_train.train_and_evaluate(tiny_lm(corpus_dir, head=head, num_devices=n),
                                         str(tmp_path / str(n))) for n in (1, 8)}
  loss = lambda out: [r["train_loss"] for r in out["records"] if "train_loss" in r]
  np.testing.assert_allclose(loss(runs[1]), loss(runs[8]), rtol=2e-5)
  np.testing.assert_allclose(runs[1]["valid_ppl"], runs[8]["valid_ppl"], rtol=2e-5)
  leaf = jax.tree.leaves(runs[8]["state"]["params"])[0]
  assert len(leaf.sharding.device_set) == 8


# ----------------------------------------------------------------- errors


def test_lm_config_errors(corpus_dir, tmp_path):
  c = tiny_lm(corpus_dir)
  c.unlock()
  c.bogus = 1
  with pytest.raises(ValueError, match="unknown config key.*bogus"):
    lm_train.train_and_evaluate(c, str(tmp_path))
  with pytest.raises(ValueError, match="config.head='softmax'"):
    lm_train.train_and_evaluate(tiny_lm(corpus_dir, head="softmax"), str(tmp_path))
  with pytest.raises(ValueError, match="dropout_rate=1.5"):
    lm_train.train_and_evaluate(tiny_lm(corpus_dir, dropout_rate=1.5), str(tmp_path))
  retyped = ml_collections.ConfigDict({**tiny_lm(corpus_dir).to_dict(), "seq_len": 8.5})
  with pytest.raises(TypeError, match=r"config.seq_len=8.5 has type float; expected an int"):
    lm_train.train_and_evaluate(retyped, str(tmp_path))
  with pytest.raises(ValueError, match="batch_size=6 must be divisible by the number of devices"):
    lm_train.train_and_evaluate(tiny_lm(corpus_dir, batch_size=6, num_devices=0), str(tmp_path))
  with pytest.raises(ValueError, match="num_devices=9"):
    lm_train.train_and_evaluate(tiny_lm(corpus_dir, num_devices=9), str(tmp_path))
  with pytest.raises(ValueError, match="adaptive_cutoffs"):
    lm_train.train_and_evaluate(tiny_lm(corpus_dir, head="adaptive", adaptive_cutoffs=(20, 5000)),
                                str(tmp_path))
  del c.bogus
  c.lock()
  with pytest.raises(AttributeError):  # a locked ConfigDict (what main.py uses) refuses new keys
    c.bogus = 1


def test_lm_data_errors(corpus_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    lm_train.train_and_evaluate(tiny_lm(str(tmp_path / "nope")), str(tmp_path / "w"))
  d = tmp_path / "partial"
  d.mkdir()
  (d / "train.txt").write_text("a b c\n")
  with pytest.raises(FileNotFoundError, match="valid.txt"):
    lm_train.train_and_evaluate(tiny_lm(str(d)), str(tmp_path / "w"))
  (d / "valid.txt").write_text("a b\n")
  (d / "test.txt").write_text("\n  \n")
  with pytest.raises(ValueError, match="test.txt is empty"):
    lm_train.train_and_evaluate(tiny_lm(str(d)), str(tmp_path / "w"))


def test_lm_nan_loss_raises(corpus_dir, tmp_path):
  config = tiny_lm(corpus_dir, head="full", learning_rate=1e38, grad_clip_norm=1e38,
                   num_train_steps=6, warmup_steps=0)
  with pytest.raises(FloatingPointError, match="loss became"):
    lm_train.train_and_evaluate(config, str(tmp_path))


def test_lm_cli(corpus_dir, tmp_path):
  """The README command on the default corpus (tiny overrides) trains and prints perplexity;
  a bad key is refused."""
  base = [sys.executable, "-m", "examples.lm.main", f"--workdir={tmp_path / 'w'}",
          "--config.max_vocab=500", "--config.adaptive_cutoffs=(50,200)",
          "--config.seq_len=8", "--config.batch_size=8",
          "--config.emb_dim=16", "--config.hidden_dim=16", "--config.num_train_steps=2",
          "--config.eval_every_steps=2", "--config.eval_max_tokens=64",
          "--config.num_devices=1"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  ok = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "final: valid_ppl=" in ok.stdout and "tok_s=" in ok.stderr
  assert "vocabulary 500" in ok.stdout and "head adaptive" in ok.stdout
  assert os.path.exists(tmp_path / "w" / "metrics.png")
  bad = subprocess.run(base + ["--config.no_such_field=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "no_such_field" in bad.stderr


def test_compare_heads_equal_tokens_quick(corpus_dir, tmp_path):
  """The quality study's quick mode: every head, same tokens, a table with the targets,
  the two-panel PNG and the curves."""
  from examples.lm import compare_heads
  # sampled/1 (one negative) trails the full head at equal tokens, so the catch-up runs.
  names = ["full", "adaptive", "hsigmoid", "hsigmoid/huffman", "sampled/1", "sampled/32"]
  out = str(tmp_path / "q" / "quality.md")
  os.makedirs(os.path.dirname(out))
  config = tiny_lm(corpus_dir, eval_max_tokens=100)
  text = compare_heads.run_equal_tokens(config, names, epochs=0.5, evals=2, out=out)
  rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
  assert [r.split("|")[1].strip() for r in rows[1:]] == names
  assert len({r.split("|")[2] for r in rows[1:]}) == 1  # same tokens for every head
  assert all(f"- {n}: ratio" in text for n in names[1:])
  with open(out) as f:
    assert f.read().startswith(text)
  with open(str(tmp_path / "q" / "quality.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(str(tmp_path / "q" / "quality.json")) as f:
    saved = json.load(f)
  assert [r["name"] for r in saved["runs"]] == names
  full = saved["runs"][0]
  for r in saved["runs"]:
    equal = [p for p in r["curve"] if not p.get("extended")]
    assert [p["tokens"] for p in equal] == [p["tokens"] for p in full["curve"]]
    assert len(equal) == 2 and all(math.isfinite(p["valid_ppl"]) for p in r["curve"])
    assert equal[0]["seconds"] < equal[1]["seconds"] and math.isfinite(r["test_ppl"])
    assert r["valid_ppl"] == equal[-1]["valid_ppl"]
    extra = r["curve"][len(equal):]  # catching up: until full's final ppl or full's time
    assert all(p.get("extended") for p in extra)
    if r["name"] == "sampled/1":
      assert extra, "sampled/1 trails full at equal tokens, so it must have kept training"
    if extra:
      assert r["valid_ppl"] > full["valid_ppl"]
      assert (extra[-1]["valid_ppl"] <= full["valid_ppl"]
              or extra[-1]["seconds"] >= full["equal_seconds"])
      assert all(p["valid_ppl"] > full["valid_ppl"] and p["seconds"] < full["equal_seconds"]
                 for p in extra[:-1])
  curve = [{"seconds": 1.0, "valid_ppl": 9.0}, {"seconds": 2.0, "valid_ppl": 4.0}]
  assert compare_heads.first_reaching(curve, 5.0) is curve[1]
  assert compare_heads.first_reaching(curve, 3.0) is None
  with pytest.raises(ValueError, match="sampled/<number"):
    compare_heads._head_config(config, "sampled/many")


# -------------------------------------------------------------------- VAE


@pytest.mark.parametrize("head,tree", [("adaptive", "default")])
def test_vae_smoke(corpus_dir, tmp_path, head, tree):
  config = tiny_vae(corpus_dir, head=head, hsigmoid_tree=tree)
  out = vae_train.train_and_evaluate(config, str(tmp_path))
  assert math.isfinite(out["valid_elbo_ppl"]) and out["valid_elbo_ppl"] > 1.0
  weights = [r["kl_weight"] for r in out["records"] if "kl_weight" in r]
  np.testing.assert_allclose(weights, [0.0, 0.25, 0.5, 0.75])  # linear annealing to 1
  for kind in ("greedy", "sampled"):
    assert len(out["samples"][kind]) == 3 and all(isinstance(s, str) for s in out["samples"][kind])
  assert len(out["interpolation"]["decodes"]) == 5 and out["interpolation"]["a"]
  text = (tmp_path / "samples.txt").read_text()
  assert text.count("\n") == 3 + 3 + 5 + 7  # 3 + 3 + 5 decodes, 5 comment lines, 2 blank
  assert all(s in text for s in out["samples"]["greedy"] + out["interpolation"]["decodes"])
  assert (tmp_path / "metrics.png").exists()
  check_vae_terms(config, out["state"]["params"])


def test_vae_kl_grows_after_annealing_and_collapses_without_remedies(corpus_dir, tmp_path):
  """Word dropout + free bits (the defaults) keep the latent in use: once the KL weight has
  reached 1 (step 20) the validation KL grows, and the decoder predicts better from q(z|x)
  than from the prior. Without them (control) the same run collapses to KL ~ 0."""
  def kl_curve(workdir, **overrides):
    config = tiny_vae(corpus_dir, num_train_steps=60, kl_anneal_steps=20, eval_every_steps=20,
                      checkpoint_every_steps=100, num_samples=0, **overrides)
    out = vae_train.train_and_evaluate(config, str(workdir))
    records = [r for r in out["records"] if "valid_kl" in r]
    assert [r["step"] for r in records] == [20, 40, 60]
    return [r["valid_kl"] for r in records], records[-1]

  defaults = load_config("vae")
  assert defaults.free_bits > 0 and defaults.word_dropout > 0
  kl, last = kl_curve(tmp_path / "on", free_bits=defaults.free_bits,
                      word_dropout=defaults.word_dropout)
  assert kl[0] < kl[1] < kl[2] and kl[2] > 0.2 and kl[2] > 5 * kl[0], kl
  assert last["valid_recon_ppl"] < last["valid_prior_ppl"]
  kl_off, _ = kl_curve(tmp_path / "off", free_bits=0.0, word_dropout=0.0)
  assert max(kl_off) < 0.1 < kl[2], kl_off


def check_vae_terms(config, params):
  """The KL term is KL(N(mu, sigma^2) || N(0, I)) of the encoder; masks end at <eos>."""
  vocab, arrays = vae_train.load_data(config)
  spec = heads.spec_from_config(config, num_classes=len(vocab), features=config.hidden_dim,
                                counts=vocab.counts)
  model = models.TextVAE(config, spec, vocab.eos_id, vocab.unk_id)
  b = vae_train.make_batch(arrays["train"][0][:4], arrays["train"][1][:4], vocab.eos_id)
  key = jax.random.key(0)
  (_, kl), (mu, logvar) = jax.jit(lambda p: (
      model.apply({"params": p}, b["tokens"], b["targets"], b["lengths"], train=False,
                  rngs={"latent": key}),
      model.apply({"params": p}, b["tokens"], b["lengths"], method=model.encode)))(params)
  mu, var = np.asarray(mu, np.float64), np.exp(np.asarray(logvar, np.float64))
  expected = 0.5 * (var + mu**2 - 1 - np.log(var))  # per latent dimension
  np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-6)
  assert np.all(b["targets"][np.arange(4), b["lengths"]] == vocab.eos_id)
  np.testing.assert_array_equal(b["mask"].sum(1), b["lengths"] + 1)
