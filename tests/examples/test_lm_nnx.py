"""The Flax NNX language-model example (examples/lm_nnx) trains every head and resumes."""
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT

from examples.lm import train as lm_train  # noqa: E402
from examples.lm_nnx import train as nnx_train  # noqa: E402

pytestmark = pytest.mark.slow


def _config(corpus_dir, **overrides):
  spec = importlib.util.spec_from_file_location("lm_lstm", os.path.join(ROOT, "configs", "lm_lstm.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.update(dict(data_dir=corpus_dir, max_vocab=0, seq_len=8, batch_size=8, emb_dim=16,
                hidden_dim=16, num_layers=1, adaptive_cutoffs=(20, 100), sampled_num_samples=16,
                num_train_steps=3, eval_every_steps=3, eval_max_tokens=200, log_every_steps=1,
                checkpoint_every_steps=2, warmup_steps=1, learning_rate=1e-2, head="full",
                num_devices=2))
  c.update(overrides)
  return c




@pytest.mark.parametrize("head,tree", [("full", "default"), ("adaptive", "default"),
                                       ("hsigmoid", "default"), ("hsigmoid", "huffman"),
                                       ("sampled", "default")])
def test_nnx_lm_trains_every_head(corpus_dir, tmp_path, head, tree):
  config = _config(corpus_dir, head=head, hsigmoid_tree=tree)
  out = nnx_train.train_and_evaluate(config, str(tmp_path))
  vocab_size = len(lm_train.load_data(config)[0])
  assert math.isfinite(out["valid_ppl"]) and 1.0 < out["valid_ppl"] < 10 * vocab_size
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  # evaluation is exact: nll = -log_prob[label], and log_prob is normalised
  model = out["model"]
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % vocab_size
  targets = (tokens + 1) % vocab_size
  logp = model.log_prob(tokens)
  np.testing.assert_allclose(jax.nn.logsumexp(logp, -1), 0.0, atol=1e-4)
  gathered = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(model(tokens, targets), gathered, rtol=1e-4, atol=1e-4)


def test_nnx_lm_resume_gives_identical_continuation(corpus_dir, tmp_path):
  cfg = lambda n: _config(corpus_dir, head="sampled", num_train_steps=n, eval_every_steps=n,
                          checkpoint_every_steps=2)
  straight = nnx_train.train_and_evaluate(cfg(4), str(tmp_path / "a"))
  nnx_train.train_and_evaluate(cfg(2), str(tmp_path / "b"))
  resumed = nnx_train.train_and_evaluate(cfg(4), str(tmp_path / "b"))
  losses = lambda out: [r["train_loss"] for r in out["records"] if "train_loss" in r]
  np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)
  np.testing.assert_allclose(resumed["valid_ppl"], straight["valid_ppl"], rtol=1e-5)


def test_nnx_lm_rejects_the_transformer(corpus_dir, tmp_path):
  with pytest.raises(ValueError, match="config.model='transformer'"):
    nnx_train.train_and_evaluate(_config(corpus_dir, model="transformer"), str(tmp_path))
