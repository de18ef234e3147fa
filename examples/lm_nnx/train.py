"""The LSTM language model trained with Flax NNX: ``train_and_evaluate(config, workdir)``.

The same config (``configs/lm_lstm.py``), data, batches and loop as
``examples/lm`` (its data functions and ``examples.common.fit``: progress bar,
evaluation, orbax checkpoints that resume, metrics file and plot); what is
NNX here is the model (``nnx.Module``s holding a ``jax_bigsoftmax.nnx``
head), the step (``nnx.jit``, ``nnx.value_and_grad``, ``nnx.Optimizer``) and
the checkpointed state (``nnx.state`` of the model and the optimizer).
Randomness (dropout, the sampled head's negatives) comes from
``fold_in(key(seed), optimizer.step)``, so a resumed run repeats the same steps.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from examples import common, heads
from examples.lm import train as lm_train
from examples.lm_nnx import models


def check_config(config):
  """The linen trainer's checks; this example has the LSTM backbone only."""
  lm_train.check_config(config)
  if config.model != "lstm":
    raise ValueError(f"config.model={config.model!r}: the NNX example has the 'lstm' backbone"
                     " only (examples/lm trains the transformer)")
  if config.tie_embeddings:
    raise ValueError("config.tie_embeddings=True: the NNX example has untied heads only"
                     " (examples/lm trains a tied full head)")


def build(config, vocab):
  """The NNX model and its ``nnx.Optimizer``."""
  spec = heads.spec_from_config(config, num_classes=len(vocab), features=config.hidden_dim,
                                counts=vocab.counts)
  model = models.LanguageModel(config, spec, rngs=nnx.Rngs(params=config.seed))
  return model, nnx.Optimizer(model, common.adam_with_clipping(config), wrt=nnx.Param)


@nnx.jit
def _train_step(model, optimizer, batch, base_key):
  key = jax.random.fold_in(base_key, optimizer.step[...])

  def loss_fn(model):
    nll = model(batch["inputs"], batch["targets"], key=key)
    return jnp.sum(nll * batch["mask"]) / jnp.sum(batch["mask"])

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return {"loss": loss, "grad_norm": optax.tree.norm(grads)}


@nnx.jit
def _eval_step(model, batch):
  nll = model(batch["inputs"], batch["targets"])
  return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])


def make_steps(graphdef, seed: int):
  """``train_step(state, batch)`` and ``eval_step(state, batch)`` over the ``nnx.State``
  of ``(model, optimizer)``, the form ``common.fit`` checkpoints."""
  base_key = jax.random.key(seed)

  def train_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    metrics = _train_step(model, optimizer, batch, base_key)
    return nnx.state((model, optimizer)), metrics

  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    return _eval_step(model, batch)

  return train_step, eval_step


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the configured NNX LM, evaluating, checkpointing and logging into ``workdir``.

  Args:
    config: an ``ml_collections.ConfigDict`` like ``configs/lm_lstm.py``.
    workdir: output folder (checkpoints, ``metrics.jsonl``, ``metrics.png``);
      a run finds its last checkpoint there and resumes from it.

  Returns:
    ``{"valid_ppl", "test_ppl", "num_params", "records", "model"}``.

  Raises:
    ValueError / TypeError: bad config; FileNotFoundError: missing data dir;
    FloatingPointError: the loss became NaN or inf.
  """
  check_config(config)
  mesh = common.make_mesh(config.num_devices)
  common.check_batch_divisible(config.batch_size, mesh)
  vocab, streams = lm_train.load_data(config)
  model, optimizer = build(config, vocab)
  graphdef, state = nnx.split((model, optimizer))
  state = jax.device_put(state, common.replicated(mesh))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  if jax.process_index() == 0:
    print(f"corpus: {len(streams['train']):,} train tokens, vocabulary {len(vocab):,}; NNX "
          f"lstm + jax_bigsoftmax.nnx.{type(model.head).__name__}: {num_params:,} parameters "
          f"on {mesh.devices.size} device(s)", flush=True)
  train_step, eval_step = make_steps(graphdef, config.seed)
  state, records, valid, test = lm_train.fit_and_report(
      config, workdir, state, streams, train_step=train_step, eval_step=eval_step, mesh=mesh,
      desc=f"lm-nnx-{config.head}", plot=False)
  model, _ = nnx.merge(graphdef, state)
  return {"valid_ppl": valid, "test_ppl": test, "num_params": num_params,
          "records": records, "model": model}
