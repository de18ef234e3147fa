"""Text VAE training with linear KL annealing: ``train_and_evaluate(config, workdir)``.

Loss of a batch (Bowman et al. 2016)::

  loss = (sum_tokens mask * nll + kl_weight * sum_sentences KL) / num_sentences
  kl_weight = min(1, step / kl_anneal_steps)

Sums run over the global (device-sharded) batch before dividing. Validation
reports the reconstruction NLL and KL per sentence and the ELBO perplexity
bound ``exp((recon + KL) / tokens)`` (exact log-probabilities, one fixed latent
sample). After training, ``num_samples`` sentences are decoded greedily from
``z ~ N(0, I)`` and written to ``workdir/samples.txt``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples import common, data, heads
from examples.vae import models

_INT = (int,)
_FLOAT = (int, float)
SCHEMA = {
    **common.BASE_SCHEMA,
    **heads.SCHEMA,
    "min_len": (_INT, common.positive, "an int >= 1"),
    "max_len": (_INT, common.positive, "an int >= min_len"),
    "emb_dim": (_INT, common.positive, "an int > 0"),
    "hidden_dim": (_INT, common.positive, "an int > 0"),
    "latent_dim": (_INT, common.positive, "an int > 0"),
    "word_dropout": (_FLOAT, common.fraction, "a float in [0, 1)"),
    "kl_anneal_steps": (_INT, common.non_negative, "an int >= 0 (0: weight 1 from the start)"),
    "eval_max_sentences": (_INT, common.non_negative, "0 (whole split) or an int > 0"),
    "num_samples": (_INT, common.non_negative, "an int >= 0"),
}


def check_config(config):
  common.check_config(config, SCHEMA)
  if config.max_len < config.min_len:
    raise ValueError(f"config.max_len={config.max_len} must be >= config.min_len={config.min_len}")


def load_data(config):
  """``(vocab, {split: (tokens [N, max_len], lengths [N])})``: sentences of min_len..max_len words."""
  corpus = data.cached_corpus(config.data_dir)
  kept = {s: [t for t in corpus[s] if config.min_len <= len(t) <= config.max_len]
          for s in data.SPLITS}
  for s, sents in kept.items():
    if not sents:
      raise ValueError(f"the {s} split has no sentence of {config.min_len}..{config.max_len} "
                       "tokens; change min_len/max_len or the corpus")
  vocab = data.build_vocab(kept["train"], max_size=config.max_vocab, min_count=config.min_count)
  arrays = {}
  for s, sents in kept.items():
    tokens = np.zeros((len(sents), config.max_len), np.int32)
    lengths = np.asarray([len(t) for t in sents], np.int32)
    for i, t in enumerate(sents):
      tokens[i, :len(t)] = vocab.encode(t)
    arrays[s] = (tokens, lengths)
  return vocab, arrays


def make_batch(tokens, lengths, eos_id: int):
  """Adds targets (sentence then ``<eos>``) and the mask over them."""
  n, t = tokens.shape
  targets = np.concatenate([tokens, np.zeros((n, 1), np.int32)], 1)
  targets[np.arange(n), lengths] = eos_id
  mask = (np.arange(t + 1)[None, :] <= lengths[:, None]).astype(np.float32)
  return {"tokens": tokens, "targets": targets, "lengths": lengths, "mask": mask}


def eval_batches(tokens, lengths, eos_id, *, batch_size: int, max_sentences: int):
  n = len(tokens) if not max_sentences else min(max_sentences, len(tokens))
  rows = -(-n // batch_size) * batch_size
  tok = np.zeros((rows, tokens.shape[1]), np.int32)
  lens = np.zeros((rows,), np.int32)
  tok[:n], lens[:n] = tokens[:n], lengths[:n]
  batch = make_batch(tok, lens, eos_id)
  batch["mask"][n:] = 0.0
  batch["weight"] = (np.arange(rows) < n).astype(np.float32)
  return [{k: v[i:i + batch_size] for k, v in batch.items()} for i in range(0, rows, batch_size)]


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the VAE; returns ``{"valid_elbo_ppl", "samples", "records", ...}``.

  Raises:
    ValueError / TypeError: bad config; FileNotFoundError: missing data dir;
    FloatingPointError: the loss became NaN or inf.
  """
  check_config(config)
  mesh = common.make_mesh(config.num_devices)
  common.check_batch_divisible(config.batch_size, mesh)
  vocab, arrays = load_data(config)
  spec = heads.spec_from_config(config, num_classes=len(vocab), features=config.hidden_dim,
                                counts=vocab.counts)
  model = models.TextVAE(config, spec, vocab.eos_id, vocab.unk_id)
  tx = common.adam_with_clipping(config)
  key = jax.random.key(config.seed)
  dummy = make_batch(*(a[:2] for a in arrays["train"]), vocab.eos_id)
  repl, shard = common.replicated(mesh), common.data_sharded(mesh)

  def init():
    params = model.init({"params": key, "dropout": key, "latent": key, "sampler": key},
                        dummy["tokens"], dummy["targets"], dummy["lengths"], train=False)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  state = jax.jit(init, out_shardings=repl)()
  params = state["params"]
  num_params = sum(x.size for x in jax.tree.leaves(params))
  if jax.process_index() == 0:
    print(f"VAE corpus: {len(arrays['train'][0]):,} train / {len(arrays['valid'][0]):,} valid "
          f"sentences of {config.min_len}..{config.max_len} tokens, vocabulary {len(vocab):,}; "
          f"head {config.head}: {num_params:,} parameters on {mesh.devices.size} device(s)",
          flush=True)

  def kl_weight(step):
    if config.kl_anneal_steps == 0:
      return jnp.float32(1.0)
    return jnp.minimum(1.0, step.astype(jnp.float32) / config.kl_anneal_steps)

  def train_step(state, batch):
    rng = jax.random.fold_in(key, state["step"])
    r_drop, r_lat, r_samp = jax.random.split(rng, 3)
    w = kl_weight(state["step"])

    def loss_fn(params):
      nll, kl = model.apply({"params": params}, batch["tokens"], batch["targets"], batch["lengths"],
                            train=True, rngs={"dropout": r_drop, "latent": r_lat, "sampler": r_samp})
      recon = jnp.sum(nll * batch["mask"])
      kl_sum = jnp.sum(kl)
      n = batch["tokens"].shape[0]
      return (recon + w * kl_sum) / n, (recon / n, kl_sum / n)

    (loss, (recon, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return ({"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
             "opt_state": opt_state},
            {"loss": loss, "recon": recon, "kl": kl, "kl_weight": w})

  def eval_step(state, batch):
    ekey = jax.random.key(config.seed + 1)
    nll, kl = model.apply({"params": state["params"]}, batch["tokens"], batch["targets"],
                          batch["lengths"], train=False, rngs={"latent": ekey})
    return (jnp.sum(nll * batch["mask"]), jnp.sum(kl * batch["weight"]), jnp.sum(batch["mask"]),
            jnp.sum(batch["weight"]))

  train_step = jax.jit(train_step, in_shardings=(repl, shard), out_shardings=(repl, repl),
                       donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(repl, shard), out_shardings=repl)
  valid = eval_batches(*arrays["valid"], vocab.eos_id, batch_size=config.batch_size,
                       max_sentences=config.eval_max_sentences)

  def evaluate(state):
    recon = kl = tokens = sents = 0.0
    for b in valid:
      r, k, t, s = eval_step(state, common.put_global_batch(b, mesh))
      recon, kl, tokens, sents = recon + float(r), kl + float(k), tokens + float(t), sents + float(s)
    return {"valid_recon": recon / sents, "valid_kl": kl / sents,
            "valid_elbo_ppl": float(np.exp((recon + kl) / tokens))}

  train_tokens, train_lengths = arrays["train"]

  def get_batch(step):
    idx = np.random.default_rng([config.seed, step]).integers(0, len(train_tokens), config.batch_size)
    batch = make_batch(train_tokens[idx], train_lengths[idx], vocab.eos_id)
    return batch, int(batch["mask"].sum())

  state, records = common.fit(config=config, workdir=workdir, state=state, train_step=train_step,
                              get_batch=get_batch, evaluate=evaluate, mesh=mesh,
                              desc=f"vae-{config.head}")
  samples = sample_sentences(model, state["params"], vocab, config)
  if jax.process_index() == 0 and samples:
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
      f.write("\n".join(samples) + "\n")
    print("greedy samples from z ~ N(0, I):\n" + "\n".join(f"  {s}" for s in samples), flush=True)
  final = [r for r in records if "valid_elbo_ppl" in r]
  final = final[-1] if final else evaluate(state)
  if jax.process_index() == 0:
    print(f"final: valid_elbo_ppl={final['valid_elbo_ppl']:.2f} "
          f"valid_recon={final['valid_recon']:.3f} valid_kl={final['valid_kl']:.3f} "
          f"(metrics: {os.path.join(workdir, 'metrics.jsonl')}, plot: "
          f"{os.path.join(workdir, 'metrics.png')})", flush=True)
  return {"valid_elbo_ppl": final["valid_elbo_ppl"], "samples": samples, "records": records,
          "num_params": num_params, "state": state}


def sample_sentences(model, params, vocab, config) -> list[str]:
  """``num_samples`` greedy decodes from prior samples, cut at the first ``<eos>``."""
  if not config.num_samples:
    return []
  z = jax.random.normal(jax.random.key(config.seed + 2), (config.num_samples, config.latent_dim))
  init = jax.jit(lambda p, z: model.apply({"params": p}, z, method=models.TextVAE.initial_carry))
  step = jax.jit(lambda p, c, t: model.apply({"params": p}, c, t, method=models.TextVAE.decode_step))
  carry, token = init(params, z), jnp.full((config.num_samples,), vocab.eos_id, jnp.int32)
  tokens = []
  for _ in range(config.max_len + 1):  # one compiled step, called max_len + 1 times
    carry, token = step(params, carry, token)
    tokens.append(np.asarray(token))
  ids = np.stack(tokens, axis=1)
  out = []
  for row in ids:
    words = vocab.decode(row)
    out.append(" ".join(words[:words.index(data.EOS)] if data.EOS in words else words))
  return out
