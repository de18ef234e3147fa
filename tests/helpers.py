"""Helpers shared by the test modules (on ``sys.path`` through pytest's ``pythonpath``)."""
import importlib.util
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def tiered(values, fast=(0,), multi=True):
  """Parametrize ``values`` of which those at the indices ``fast`` run in the fast tier and
  the others only in the full tier (marked ``slow``); ``multi``: each value is a tuple of
  several arguments."""
  return [v if i in fast else pytest.param(*(v if multi else (v,)), marks=pytest.mark.slow)
          for i, v in enumerate(values)]


def mesh(shape=(2,), names=("vocab",)):
  """A mesh of the first ``prod(shape)`` (fake CPU) devices."""
  n = int(np.prod(shape))
  return Mesh(np.array(jax.devices()[:n]).reshape(shape), names)


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_lm(corpus_dir, **overrides):
  c = load_config("lm_lstm")
  c.update(dict(data_dir=corpus_dir, max_vocab=0, seq_len=8, batch_size=8, emb_dim=16,
                hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, adaptive_cutoffs=(20, 100),
                sampled_num_samples=16, num_train_steps=3, eval_every_steps=3,
                eval_max_tokens=200, log_every_steps=1, checkpoint_every_steps=2, warmup_steps=1,
                head="full", num_devices=1))
  c.update(overrides)
  return c


def tiny_vae(corpus_dir, **overrides):
  c = load_config("vae")
  c.update(dict(data_dir=corpus_dir, max_vocab=0, batch_size=8, emb_dim=16, hidden_dim=16,
                latent_dim=4, max_len=10, adaptive_cutoffs=(20, 100), sampled_num_samples=16,
                num_train_steps=4, kl_anneal_steps=4, eval_every_steps=4, eval_max_sentences=16,
                log_every_steps=1, checkpoint_every_steps=4, warmup_steps=1, num_samples=3,
                head="full", num_devices=1))
  c.update(overrides)
  return c
