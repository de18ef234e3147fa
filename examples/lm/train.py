"""Word-level language model training: ``train_and_evaluate(config, workdir)``.

Batches are ``batch_size`` windows of ``seq_len + 1`` tokens drawn at random
positions of the training stream by a generator seeded with ``(seed, step)``,
so a run resumed from a checkpoint sees exactly the batches it would have seen.
Validation and test perplexity use consecutive non-overlapping windows of the
split (each starting from a fresh state) and exact log-probabilities.

Devices: ``mesh_shape`` (e.g. ``"data=4,model=2"``) lays the devices of every
process out on a ``("data", "model")`` mesh; the default ``""`` puts all of
them (or ``num_devices``) on ``data``. Batches are sharded on ``data``; the
output layer's vocabulary-sized parameters are sharded on ``model`` (the
head's ``vocab_axis``; the rest of the model is replicated), so a vocabulary
too big for one device still trains. The per-token losses are summed over the
global batch and divided by the global token count, so 1 device, ``data=8``
and ``data=4,model=2`` give the same loss. Checkpoints hold the sharded state
and restore onto any mesh shape.
"""
from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from examples import common, data, heads
from examples.lm import models

_INT = (int,)
_FLOAT = (int, float)
SCHEMA = {
    **common.BASE_SCHEMA,
    **heads.SCHEMA,
    "model": (str, lambda v: v in ("lstm", "transformer"), "'lstm' or 'transformer'"),
    "seq_len": (_INT, common.positive, "an int > 0"),
    "emb_dim": (_INT, common.positive, "an int > 0"),
    "hidden_dim": (_INT, common.positive, "an int > 0"),
    "num_layers": (_INT, common.positive, "an int > 0"),
    "num_heads": (_INT, common.positive, "an int > 0"),
    "mlp_dim": (_INT, common.positive, "an int > 0"),
    "dropout_rate": (_FLOAT, common.fraction, "a float in [0, 1)"),
    "eval_max_tokens": (_INT, common.non_negative, "0 (whole split) or an int > 0"),
    "tie_embeddings": (bool, lambda v: True, "True or False"),
    "mesh_shape": (str, lambda v: _parse_mesh_shape(v) is not None,
                   "'' or 'data=N' or 'data=N,model=M' (N, M > 0)"),
}
MESH_AXES = ("data", "model")


def _parse_mesh_shape(text: str) -> dict[str, int] | None:
  """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}``; None if malformed."""
  if not text.strip():
    return {}
  out = {}
  for part in text.split(","):
    name, eq, size = part.strip().partition("=")
    if not eq or name not in MESH_AXES or name in out or not size.strip().isdigit():
      return None
    out[name] = int(size)
  return out if "data" in out and all(v > 0 for v in out.values()) else None


def make_mesh(config) -> Mesh:
  """The ``("data", "model")`` mesh of ``config.mesh_shape`` over every device of every process.

  Devices are laid out in ``jax.devices()`` order, ``model`` varying fastest, so
  each process's devices are contiguous along ``model`` where they can be.
  """
  shape = _parse_mesh_shape(config.mesh_shape)
  if not shape:
    return common.make_mesh(config.num_devices)
  devices = common.make_mesh(config.num_devices).devices.ravel()
  sizes = (shape["data"], shape.get("model", 1))
  if sizes[0] * sizes[1] != len(devices):
    raise ValueError(f"config.mesh_shape={config.mesh_shape!r} has {sizes[0] * sizes[1]} devices"
                     f" but {len(devices)} are in use (config.num_devices={config.num_devices})")
  auto = (jax.sharding.AxisType.Auto,) * 2
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def check_config(config):
  """Raises ``ValueError``/``TypeError`` for unknown, missing or invalid fields."""
  common.check_config(config, SCHEMA)
  if config.tie_embeddings and (config.head != "full" or config.emb_dim != config.hidden_dim
                                or _parse_mesh_shape(config.mesh_shape).get("model", 1) > 1):
    raise ValueError(f"config.tie_embeddings=True needs head='full' (got {config.head!r}),"
                     f" emb_dim == hidden_dim (got {config.emb_dim} and {config.hidden_dim})"
                     f" and no model axis in mesh_shape (got {config.mesh_shape!r})")
  if config.model == "transformer" and config.emb_dim % config.num_heads:
    raise ValueError(f"config.emb_dim={config.emb_dim} must be divisible by "
                     f"config.num_heads={config.num_heads}")


def load_data(config):
  """``(vocab, {split: int32 stream})`` for the configured corpus."""
  corpus = data.cached_corpus(config.data_dir)
  vocab = data.build_vocab(corpus["train"], max_size=config.max_vocab, min_count=config.min_count)
  streams = {s: data.encode_stream(vocab, corpus[s]) for s in data.SPLITS}
  for s, stream in streams.items():
    if len(stream) < 2:
      raise ValueError(f"the {s} split has {len(stream)} token(s); need at least 2")
  if len(streams["train"]) <= config.seq_len + 1:
    raise ValueError(f"the train split has {len(streams['train'])} tokens; need more than "
                     f"seq_len + 1 = {config.seq_len + 1}")
  return vocab, streams


def train_batch(stream: np.ndarray, step: int, *, batch_size: int, seq_len: int, seed: int):
  """Random windows of the stream, a pure function of ``(seed, step)``."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(stream) - seq_len, size=batch_size)
  windows = stream[starts[:, None] + np.arange(seq_len + 1)]
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
          "mask": np.ones((batch_size, seq_len), np.float32)}


def eval_batches(stream: np.ndarray, *, batch_size: int, seq_len: int, max_tokens: int = 0):
  """Consecutive windows covering the first ``max_tokens`` targets (0: all), padded and masked."""
  n = len(stream) - 1 if not max_tokens else min(max_tokens, len(stream) - 1)
  num_windows = math.ceil(n / seq_len)
  num_rows = math.ceil(num_windows / batch_size) * batch_size
  inputs = np.zeros((num_rows, seq_len), np.int32)
  targets = np.zeros((num_rows, seq_len), np.int32)
  mask = np.zeros((num_rows, seq_len), np.float32)
  for w in range(num_windows):
    lo, hi = w * seq_len, min((w + 1) * seq_len, n)
    inputs[w, :hi - lo] = stream[lo:hi]
    targets[w, :hi - lo] = stream[lo + 1:hi + 1]
    mask[w, :hi - lo] = 1.0
  return [{"inputs": inputs[i:i + batch_size], "targets": targets[i:i + batch_size],
           "mask": mask[i:i + batch_size]} for i in range(0, num_rows, batch_size)]


def build(config, vocab, mesh: Mesh | None = None):
  """The model, optimizer and head spec for ``config`` (head sharded on ``model`` if > 1)."""
  spec = heads.spec_from_config(config, num_classes=len(vocab), features=config.hidden_dim,
                                counts=vocab.counts)
  if mesh is not None and mesh.shape.get("model", 1) > 1:
    spec = heads.shard_spec(spec, mesh, vocab_axis="model", data_axis="data")
  model = models.LanguageModel(config, spec)
  return model, common.adam_with_clipping(config), spec


def make_steps(model, tx, mesh, seed: int, state_shardings=None):
  """Jitted, sharded ``train_step`` and ``eval_step`` (state replicated unless given)."""
  base_key = jax.random.key(seed)
  repl, shard = common.replicated(mesh), common.data_sharded(mesh)
  state_sh = repl if state_shardings is None else state_shardings

  def train_step(state, batch):
    rng = jax.random.fold_in(base_key, state["step"])
    dropout_rng, sampler_rng = jax.random.split(rng)

    def loss_fn(params):
      nll = model.apply({"params": params}, batch["inputs"], batch["targets"], train=True,
                        rngs={"dropout": dropout_rng, "sampler": sampler_rng})
      # Sum over the whole (sharded) global batch, then divide by its token count.
      return jnp.sum(nll * batch["mask"]) / jnp.sum(batch["mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  def eval_step(state, batch):
    nll = model.apply({"params": state["params"]}, batch["inputs"], batch["targets"], train=False)
    return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])

  train_step = jax.jit(train_step, in_shardings=(state_sh, shard), out_shardings=(state_sh, repl),
                       donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(state_sh, shard), out_shardings=(repl, repl))
  return train_step, eval_step


def init_state(model, tx, config, mesh):
  """``{"step", "params", "opt_state"}`` built under ``jit`` on ``mesh``.

  Parameters carrying partitioning metadata (the sharded head's) and their
  optimizer moments are placed by ``nn.get_partition_spec``; the rest is
  replicated. The returned state holds plain arrays (metadata unboxed).
  """

  def init():
    params = models.init_params(model, jax.random.key(config.seed), 2, config.seq_len)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  specs = nn.get_partition_spec(jax.eval_shape(init))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                           is_leaf=lambda x: isinstance(x, P))
  return jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the configured LM, evaluating, checkpointing and logging into ``workdir``.

  Args:
    config: an ``ml_collections.ConfigDict`` like ``configs/lm_lstm.py``.
    workdir: output folder (checkpoints, ``metrics.jsonl``, ``metrics.png``);
      a run finds its last checkpoint there and resumes from it.

  Returns:
    ``{"valid_ppl", "test_ppl", "num_params", "records"}``.

  Raises:
    ValueError / TypeError: bad config; FileNotFoundError: missing data dir;
    FloatingPointError: the loss became NaN or inf.
  """
  check_config(config)
  mesh = make_mesh(config)
  if config.batch_size % mesh.shape["data"]:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of "
                     f"devices on the data axis ({mesh.shape['data']})")
  vocab, streams = load_data(config)
  model, tx, spec = build(config, vocab, mesh)
  state = init_state(model, tx, config, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  if jax.process_index() == 0:
    print(f"corpus: {len(streams['train']):,} train / {len(streams['valid']):,} valid / "
          f"{len(streams['test']):,} test tokens, vocabulary {len(vocab):,}; "
          f"model {config.model} + head {config.head}"
          f"{'/' + config.hsigmoid_tree if config.head == 'hsigmoid' else ''}: "
          f"{num_params:,} parameters on {mesh.devices.size} device(s) "
          f"({', '.join(f'{k}={v}' for k, v in mesh.shape.items())}; "
          f"{jax.process_count()} process(es))", flush=True)
  train_step, eval_step = make_steps(model, tx, mesh, config.seed,
                                     jax.tree.map(lambda x: x.sharding, state))
  state, records, valid, test = fit_and_report(
      config, workdir, state, streams, train_step=train_step, eval_step=eval_step, mesh=mesh,
      desc=f"lm-{config.model}-{config.head}", plot=True)
  return {"valid_ppl": valid, "test_ppl": test, "num_params": num_params,
          "records": records, "state": state}


def fit_and_report(config, workdir, state, streams, *, train_step, eval_step, mesh, desc,
                   plot):
  """Trains with ``common.fit`` on random train windows, evaluates valid/test exactly and
  prints the ``final:`` line (process 0). Shared by the linen and NNX LM trainers.

  Returns:
    ``(state, records, valid_ppl, test_ppl)``.
  """
  batches = {s: eval_batches(streams[s], batch_size=config.batch_size, seq_len=config.seq_len,
                             max_tokens=config.eval_max_tokens) for s in ("valid", "test")}

  def evaluate(state, split="valid"):
    nll, count = common.eval_nll_sum(eval_step, state, batches[split], mesh)
    return {f"{split}_loss": nll / count, f"{split}_ppl": common.perplexity(nll, count)}

  def get_batch(step):
    return (train_batch(streams["train"], step, batch_size=config.batch_size,
                        seq_len=config.seq_len, seed=config.seed),
            config.batch_size * config.seq_len)

  state, records = common.fit(config=config, workdir=workdir, state=state, train_step=train_step,
                              get_batch=get_batch, evaluate=evaluate, mesh=mesh, desc=desc)
  test = evaluate(state, "test")
  valid = [r["valid_ppl"] for r in records if "valid_ppl" in r] or [evaluate(state)["valid_ppl"]]
  if jax.process_index() == 0:
    where = f"metrics: {os.path.join(workdir, 'metrics.jsonl')}"
    if plot:
      where += f", plot: {os.path.join(workdir, 'metrics.png')}"
    print(f"final: valid_ppl={valid[-1]:.2f} test_ppl={test['test_ppl']:.2f} ({where})",
          flush=True)
  return state, records, valid[-1], test["test_ppl"]
