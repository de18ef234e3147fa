"""Smoke and behaviour tests of the word2vec example (examples/word2vec)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

from examples.word2vec import train  # noqa: E402

pytestmark = pytest.mark.slow


def load_config():
  spec = importlib.util.spec_from_file_location(
      "word2vec", os.path.join(ROOT, "configs", "word2vec.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def topic_corpus(tmp_path_factory):
  """Sentences drawn from one of two disjoint word groups: a word's context is its group."""
  d = tmp_path_factory.mktemp("w2v_corpus")
  rng = np.random.default_rng(0)
  groups = [[f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)]]
  for split, n in (("train", 3000), ("valid", 20), ("test", 20)):
    lines = [" ".join(rng.choice(groups[rng.integers(2)], 8)) for _ in range(n)]
    (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return str(d)


def _tiny(config, data_dir, loss):
  config.data_dir = data_dir
  config.loss = loss
  config.max_tokens = 0
  config.max_vocab = 0
  config.min_count = 1
  config.subsample = 0.0
  config.window = 3
  config.emb_dim = 16
  config.num_sampled = 8
  config.batch_size = 256
  config.num_epochs = 2
  config.learning_rate = 0.01
  config.log_every = 50
  config.queries = ("a0", "b0", "not_a_word")
  config.num_neighbours = 5
  return config


@pytest.mark.parametrize("loss", ["neg", "nce", "hsigmoid"])
def test_neighbours_come_from_the_same_group(topic_corpus, tmp_path, loss, capsys):
  metrics = train.train_and_evaluate(_tiny(load_config(), topic_corpus, loss), str(tmp_path))
  losses = [h["loss"] for h in metrics["history"]]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  for q in ("a0", "b0"):
    assert all(w[0] == q[0] for w in metrics["neighbours"][q]), metrics["neighbours"][q]
  assert "not_a_word" not in metrics["neighbours"]
  out = capsys.readouterr().out
  assert "a0:" in out and "related identifier pairs" in out
  saved = json.load(open(tmp_path / "metrics.json"))
  assert saved["neighbours"] == metrics["neighbours"]
  emb = np.load(tmp_path / "embeddings.npz")
  assert emb["emb"].shape == (metrics["vocab_size"], 16)


def test_skipgram_pairs_and_subsample():
  rng = np.random.default_rng(0)
  ids = np.arange(10, dtype=np.int32)
  c, x = train.skipgram_pairs(ids, 2, rng)
  assert np.all(np.abs(c - x) >= 1) and np.all(np.abs(c - x) <= 2)
  assert {(0, 1), (1, 0)} <= set(zip(c.tolist(), x.tolist()))
  counts = np.array([1000, 1, 1])
  kept = train.subsample(np.repeat(np.arange(3), [1000, 1, 1]), counts, 1e-3, rng)
  assert 0 < (kept == 0).sum() < 200 and (kept == 1).sum() == 1


def test_cli_on_default_corpus(tmp_path):
  """The command line on the standard-library corpus, shrunk to a few steps."""
  cmd = [sys.executable, "-m", "examples.word2vec.main", f"--workdir={tmp_path}",
         "--config.max_tokens=20000", "--config.num_epochs=1", "--config.batch_size=512",
         "--config.log_every=20", "--config.max_vocab=500"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "self:" in res.stdout and "related identifier pairs" in res.stdout
  assert 100 < json.load(open(tmp_path / "metrics.json"))["vocab_size"] <= 500  # min_count 5
