"""Text VAE training against posterior collapse: ``train_and_evaluate(config, workdir)``.

Loss of a batch (Bowman et al. 2016, with free bits)::

  loss = sum_tokens mask * nll / B + kl_weight * sum_d max(free_bits, mean_B KL_d)
  kl_weight = min(1, step / kl_anneal_steps)

Three remedies against the decoder ignoring the latent (KL -> 0): the KL weight
is annealed from 0 (Bowman et al. 2016); word dropout replaces decoder inputs
by ``<unk>`` so the decoder has to get words from ``z``; and free bits
(Kingma et al. 2016, "Improved Variational Inference with Inverse
Autoregressive Flow"): each latent dimension's
batch-mean KL costs nothing below ``free_bits`` nats, so using the latent up to
that rate is free. The reported KL is the true KL.

Sums run over the global (device-sharded) batch before dividing. Validation
reports per sentence the reconstruction NLL and KL, and as perplexities per
token the ELBO bound ``exp((recon + KL) / tokens)``, the reconstruction
``exp(recon / tokens)`` and the unconditional baseline ``exp(prior_nll /
tokens)``: the same decoder fed ``z ~ N(0, I)`` instead of ``q(z | x)`` (equal to
the reconstruction when the latent carries nothing). Exact log-probabilities,
one fixed latent sample. After training, ``workdir/samples.txt`` gets
``num_samples`` greedy and sampled decodes from ``z ~ N(0, I)`` and greedy
decodes along the line between the posterior means of two validation sentences.
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
    "free_bits": (_FLOAT, common.non_negative, "a float >= 0 (nats per latent dimension)"),
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
      n = batch["tokens"].shape[0]
      recon = jnp.sum(nll * batch["mask"]) / n
      kl_term = jnp.sum(jnp.maximum(jnp.mean(kl, axis=0), config.free_bits))  # free bits
      return recon + w * kl_term, (recon, jnp.sum(kl) / n)

    (loss, (recon, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return ({"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
             "opt_state": opt_state},
            {"loss": loss, "recon": recon, "kl": kl, "kl_weight": w})

  def eval_step(state, batch):
    ekey = jax.random.key(config.seed + 1)
    nll, kl = model.apply({"params": state["params"]}, batch["tokens"], batch["targets"],
                          batch["lengths"], train=False, rngs={"latent": ekey})
    prior_nll, _ = model.apply({"params": state["params"]}, batch["tokens"], batch["targets"],
                               batch["lengths"], train=False, prior=True, rngs={"latent": ekey})
    return (jnp.sum(nll * batch["mask"]), jnp.sum(kl.sum(-1) * batch["weight"]),
            jnp.sum(batch["mask"]), jnp.sum(batch["weight"]),
            jnp.sum(prior_nll * batch["mask"]))

  train_step = jax.jit(train_step, in_shardings=(repl, shard), out_shardings=(repl, repl),
                       donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(repl, shard), out_shardings=repl)
  valid = eval_batches(*arrays["valid"], vocab.eos_id, batch_size=config.batch_size,
                       max_sentences=config.eval_max_sentences)

  def evaluate(state):
    recon, kl, tokens, sents, prior = np.sum(
        [[float(v) for v in eval_step(state, common.put_global_batch(b, mesh))] for b in valid],
        axis=0)
    return {"valid_recon": recon / sents, "valid_kl": kl / sents,
            "valid_elbo_ppl": float(np.exp((recon + kl) / tokens)),
            "valid_recon_ppl": float(np.exp(recon / tokens)),
            "valid_prior_ppl": float(np.exp(prior / tokens))}

  train_tokens, train_lengths = arrays["train"]

  def get_batch(step):
    idx = np.random.default_rng([config.seed, step]).integers(0, len(train_tokens), config.batch_size)
    batch = make_batch(train_tokens[idx], train_lengths[idx], vocab.eos_id)
    return batch, int(batch["mask"].sum())

  state, records = common.fit(config=config, workdir=workdir, state=state, train_step=train_step,
                              get_batch=get_batch, evaluate=evaluate, mesh=mesh,
                              desc=f"vae-{config.head}")
  samples = sample_sentences(model, state["params"], vocab, config)
  interpolation = interpolate(model, state["params"], vocab, config, arrays["valid"])
  if jax.process_index() == 0 and config.num_samples:
    text = "\n".join(
        ["# greedy decodes from z ~ N(0, I)"] + samples["greedy"]
        + ["", "# sampled decodes (ancestral, temperature 1) from z ~ N(0, I)"] + samples["sampled"]
        + ["", "# greedy decodes along z = (1 - t) mu(A) + t mu(B), t = 0 .. 1",
           f"# A: {interpolation['a']}", f"# B: {interpolation['b']}"]
        + interpolation["decodes"])
    with open(os.path.join(workdir, "samples.txt"), "w") as f:
      f.write(text + "\n")
    print(text, flush=True)
  final = [r for r in records if "valid_elbo_ppl" in r]
  final = final[-1] if final else evaluate(state)
  if jax.process_index() == 0:
    print(f"final: valid_elbo_ppl={final['valid_elbo_ppl']:.2f} "
          f"valid_recon={final['valid_recon']:.3f} valid_kl={final['valid_kl']:.3f} "
          f"valid_recon_ppl={final['valid_recon_ppl']:.2f} "
          f"valid_prior_ppl={final['valid_prior_ppl']:.2f} (metrics: {os.path.join(workdir, 'metrics.jsonl')}, plot: "
          f"{os.path.join(workdir, 'metrics.png')})", flush=True)
  return {"valid_elbo_ppl": final["valid_elbo_ppl"], "valid_kl": final["valid_kl"],
          "samples": samples, "interpolation": interpolation, "records": records,
          "num_params": num_params, "state": state}


def _decode(model, params, vocab, config, z, key=None) -> list[str]:
  """Decodes ``z [n, Z]`` for ``max_len + 1`` steps (greedy, or sampled with ``key``),
  each sentence cut at its first ``<eos>``."""
  init = jax.jit(lambda p, z: model.apply({"params": p}, z, method=models.TextVAE.initial_carry))
  if key is None:
    step = jax.jit(lambda p, c, t, k: model.apply({"params": p}, c, t,
                                                   method=models.TextVAE.decode_step))
  else:
    step = jax.jit(lambda p, c, t, k: model.apply({"params": p}, c, t, k,
                                                   method=models.TextVAE.sample_step))
  carry, token = init(params, z), jnp.full((z.shape[0],), vocab.eos_id, jnp.int32)
  tokens = []
  for i in range(config.max_len + 1):  # one compiled step, called max_len + 1 times
    carry, token = step(params, carry, token, None if key is None else jax.random.fold_in(key, i))
    tokens.append(np.asarray(token))
  out = []
  for row in np.stack(tokens, axis=1):
    words = vocab.decode(row)
    out.append(" ".join(words[:words.index(data.EOS)] if data.EOS in words else words))
  return out


def sample_sentences(model, params, vocab, config) -> dict[str, list[str]]:
  """``{"greedy", "sampled"}``: ``num_samples`` decodes each from prior samples."""
  if not config.num_samples:
    return {"greedy": [], "sampled": []}
  z = jax.random.normal(jax.random.key(config.seed + 2), (config.num_samples, config.latent_dim))
  return {"greedy": _decode(model, params, vocab, config, z),
          "sampled": _decode(model, params, vocab, config, z, jax.random.key(config.seed + 3))}


def interpolate(model, params, vocab, config, valid, steps: int = 5) -> dict:
  """Greedy decodes at ``steps`` points between the posterior means of the first and the
  middle validation sentence (``{"a", "b", "decodes"}``)."""
  n = len(valid[0])
  if n < 2:
    return {"a": "", "b": "", "decodes": []}
  tokens, lengths = valid[0][[0, n // 2]], valid[1][[0, n // 2]]
  mu, _ = jax.jit(lambda p, t, n: model.apply({"params": p}, t, n,
                                              method=models.TextVAE.encode))(params, tokens, lengths)
  t = jnp.linspace(0.0, 1.0, steps)[:, None]
  z = (1.0 - t) * mu[None, 0] + t * mu[None, 1]
  a, b = (" ".join(vocab.decode(tokens[i][:lengths[i]])) for i in range(2))
  return {"a": a, "b": b, "decodes": _decode(model, params, vocab, config, z)}
