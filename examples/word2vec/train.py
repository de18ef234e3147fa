"""word2vec skip-gram training: NCE / negative sampling or Huffman hierarchical softmax.

The model is the original word2vec's: an input embedding ``emb [V, D]`` for
the centre word and an output layer that predicts each context word from it
(Mikolov et al. 2013). Two output layers, as the original tool offers:

* ``loss="neg"`` (default): word2vec's negative sampling, the sigmoid loss of
  the context word (label 1) against ``num_sampled`` noise words (label 0)
  drawn by :func:`jax_bigsoftmax.fixed_unigram_candidate_sampler` from the
  unigram counts raised to ``distortion`` (0.75), shared by the batch: the
  logits of :func:`jax_bigsoftmax.compute_sampled_logits` without the
  ``log Q`` correction.
* ``loss="nce"``: :func:`jax_bigsoftmax.nce_loss` (``tf.nn.nce_loss``) with
  the same noise words: the same logits minus ``log Q``.
* ``loss="hsigmoid"``: :func:`jax_bigsoftmax.hsigmoid_loss` over the Huffman
  tree of the word counts (:func:`jax_bigsoftmax.huffman_tree`), so frequent
  words have short codes.

At the end it prints the nearest neighbours (cosine) of ``config.queries``
and a sanity check on identifiers of the corpus: the mean similarity of
related identifier pairs (``True``/``False``, ``keys``/``values`` ...) against
random pairs, and a few analogies ``a : b :: c : ?``.
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_bigsoftmax as jbs
from examples import common, data

RELATED = (("True", "False"), ("if", "elif"), ("append", "extend"), ("keys", "values"),
           ("int", "float"), ("list", "tuple"), ("min", "max"), ("read", "write"),
           ("start", "end"), ("get", "set"), ("0", "1"), ("x", "y"), ("key", "value"),
           ("encode", "decode"), ("open", "close"), ("width", "height"))
ANALOGIES = (("True", "False", "1", "0"), ("keys", "values", "key", "value"),
             ("min", "max", "start", "end"), ("read", "write", "reader", "writer"),
             ("encode", "decode", "encoder", "decoder"))


def subsample(ids: np.ndarray, counts: np.ndarray, t: float, rng) -> np.ndarray:
  """Drops frequent tokens with word2vec's probability ``1 - sqrt(t / f) - t / f``."""
  if t <= 0:
    return ids
  f = counts[ids] / counts.sum()
  keep = (np.sqrt(f / t) + 1) * t / f
  return ids[rng.random(ids.shape[0]) < keep]


def skipgram_pairs(ids: np.ndarray, window: int, rng) -> tuple[np.ndarray, np.ndarray]:
  """(centre, context) pairs; each centre uses a random window ``b`` in [1, window]."""
  b = rng.integers(1, window + 1, size=ids.shape[0])
  centres, contexts = [], []
  for off in range(1, window + 1):
    for sign in (-1, 1):
      lo, hi = max(0, -sign * off), ids.shape[0] - max(0, sign * off)
      pos = np.arange(lo, hi)
      pos = pos[b[pos] >= off]
      centres.append(ids[pos])
      contexts.append(ids[pos + sign * off])
  return np.concatenate(centres).astype(np.int32), np.concatenate(contexts).astype(np.int32)


def init_params(key, vocab_size: int, dim: int, loss: str) -> dict:
  rows = vocab_size - 1 if loss == "hsigmoid" else vocab_size  # hsigmoid: internal nodes
  return {"emb": jax.random.uniform(key, (vocab_size, dim), jnp.float32, -0.5 / dim, 0.5 / dim),
          "out_w": jnp.zeros((rows, dim), jnp.float32),
          "out_b": jnp.zeros((rows,), jnp.float32)}


def make_loss_fn(config, counts: np.ndarray):
  """``loss_fn(params, centre [B], context [B], key) -> mean loss``."""
  vocab_size = counts.shape[0]
  if config.loss in ("neg", "nce"):
    unigrams = counts.astype(np.float64)

    def loss_fn(params, centre, context, key):
      h = params["emb"][centre]
      labels = context[:, None]
      sv = jbs.fixed_unigram_candidate_sampler(
          key, labels, 1, config.num_sampled, True, vocab_size, unigrams=unigrams,
          distortion=config.distortion)
      args = (params["out_w"], params["out_b"], labels, h, config.num_sampled, vocab_size, 1, sv)
      # A noise word equal to the context word would push the target down: mask it.
      if config.loss == "nce":
        return jnp.mean(jbs.nce_loss(*args, remove_accidental_hits=True))
      logits, targets = jbs.compute_sampled_logits(*args, subtract_log_q=False,
                                                   remove_accidental_hits=True)
      return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1))
  elif config.loss == "hsigmoid":
    table, code = (jnp.asarray(a) for a in jbs.huffman_tree(counts))

    def loss_fn(params, centre, context, key):
      del key
      h = params["emb"][centre]
      return jnp.mean(jbs.hsigmoid_loss(h, context, vocab_size - 1, params["out_w"],
                                        params["out_b"], table[context], code[context]))
  else:
    raise ValueError(f"config.loss must be 'neg', 'nce' or 'hsigmoid'; got {config.loss!r}.")
  return loss_fn


def unit_rows(emb: np.ndarray) -> np.ndarray:
  """Rows minus their mean (the direction every word shares), scaled to norm 1."""
  emb = emb - emb.mean(axis=0, keepdims=True)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)


def nearest(emb: np.ndarray, vec: np.ndarray, k: int, exclude=()) -> list[int]:
  """The k rows of ``emb`` most cosine-similar to ``vec`` (mean-centred rows)."""
  unit = unit_rows(emb)
  sims = unit @ (vec / max(np.linalg.norm(vec), 1e-8))
  sims[list(exclude)] = -np.inf
  return np.argsort(-sims)[:k].tolist()


def sanity_check(emb: np.ndarray, vocab: data.Vocab, rng) -> dict:
  """Similarity of related identifiers vs random pairs, and analogy hits in the top 10."""
  unit = unit_rows(emb)
  index = {w: i for i, w in enumerate(vocab.words)}
  pairs = [(index[a], index[b]) for a, b in RELATED if a in index and b in index]
  related = float(np.mean([unit[a] @ unit[b] for a, b in pairs])) if pairs else float("nan")
  ra, rb = rng.integers(0, len(vocab), 2000), rng.integers(0, len(vocab), 2000)
  random_sim = float(np.mean(np.sum(unit[ra] * unit[rb], axis=1)))
  analogies = []
  for a, b, c, d in ANALOGIES:
    if all(w in index for w in (a, b, c, d)):
      top = nearest(unit, unit[index[b]] - unit[index[a]] + unit[index[c]], 10,
                    exclude=(index[a], index[b], index[c]))
      analogies.append({"question": f"{a} : {b} :: {c} : ?", "expected": d,
                        "top10": vocab.decode(top), "hit": index[d] in top})
  return {"related_pairs": len(pairs), "related_similarity": related,
          "random_similarity": random_sim, "analogies": analogies}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the embeddings, prints neighbours, writes metrics.json / embeddings.npz."""
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(config.seed)
  corpus = data.cached_corpus(config.data_dir)["train"]
  if config.max_tokens:
    kept, n = [], 0
    for s in corpus:
      if n >= config.max_tokens:
        break
      kept.append(s)
      n += len(s)
    corpus = kept
  vocab = data.build_vocab(corpus, max_size=config.max_vocab, min_count=config.min_count)
  ids = data.encode_stream(vocab, corpus)
  ids = subsample(ids, vocab.counts, config.subsample, rng)
  centres, contexts = skipgram_pairs(ids, config.window, rng)
  steps_per_epoch = max(1, centres.shape[0] // config.batch_size)
  num_steps = steps_per_epoch * config.num_epochs
  print(f"word2vec ({config.loss}): {len(vocab)} words, {ids.shape[0]} tokens after"
        f" subsampling, {centres.shape[0]} pairs, {num_steps} steps", flush=True)

  key = jax.random.key(config.seed)
  params = init_params(key, len(vocab), config.emb_dim, config.loss)
  tx = optax.adam(config.learning_rate)
  loss_fn = make_loss_fn(config, vocab.counts)
  mesh = common.make_mesh(1)
  state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params,
                          "opt_state": tx.init(params)}, common.replicated(mesh))

  @jax.jit
  def train_step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch["centre"], batch["context"],
                                              jax.random.fold_in(key, state["step"]))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, {"loss": loss}

  @functools.lru_cache(maxsize=2)
  def order(epoch):
    """The pairs' order in ``epoch``: a batch is a pure function of the step, so a resumed
    run sees the batches it would have seen."""
    return np.random.default_rng([config.seed, epoch]).permutation(centres.shape[0])

  def get_batch(step):
    epoch, i = divmod(step, steps_per_epoch)
    sel = order(epoch)[i * config.batch_size:(i + 1) * config.batch_size]
    return {"centre": centres[sel], "context": contexts[sel]}, sel.shape[0]

  fit_config = config.copy_and_resolve_references()
  with fit_config.unlocked():
    fit_config.num_train_steps = num_steps
    fit_config.eval_every_steps = num_steps
    fit_config.log_every_steps = config.log_every
  t0 = time.time()
  state, records = common.fit(config=fit_config, workdir=workdir, state=state,
                              train_step=train_step, get_batch=get_batch,
                              evaluate=lambda state: {}, mesh=mesh, desc="word2vec")
  history = [{"step": r["step"], "loss": r["train_loss"]} for r in records if "train_loss" in r]
  params = state["params"]

  emb = np.asarray(params["emb"])
  neighbours = {}
  for q in config.queries:
    if q in vocab.words:
      i = vocab.words.index(q)
      neighbours[q] = vocab.decode(nearest(emb, unit_rows(emb)[i], config.num_neighbours,
                                           exclude=(i,)))
      print(f"  {q:>10}: {' '.join(neighbours[q])}")
  check = sanity_check(emb, vocab, rng)
  print(f"related identifier pairs ({check['related_pairs']}): mean cosine"
        f" {check['related_similarity']:.3f} vs random pairs {check['random_similarity']:.3f}")
  for a in check["analogies"]:
    print(f"  {a['question']:<32} {'hit ' if a['hit'] else 'miss'} top: {' '.join(a['top10'][:5])}")
  metrics = {"history": history, "neighbours": neighbours, "sanity": check,
             "vocab_size": len(vocab), "num_pairs": int(centres.shape[0]),
             "train_seconds": time.time() - t0}
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
  np.savez(os.path.join(workdir, "embeddings.npz"), emb=emb, words=np.array(vocab.words))
  return metrics
