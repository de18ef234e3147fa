"""Fixtures of the example-program tests: a tiny corpus and a persistent compilation cache."""
import jax
import numpy as np
import pytest


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs of the same tiny program (resume, 1-vs-8, CLI) compile once: a persistent cache."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(names[1], 0.0)
  jax.config.update(names[2], 0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """A small Zipfian corpus in train.txt / valid.txt / test.txt."""
  d = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(300)]
  p = 1.0 / np.arange(1, 301)
  p /= p.sum()
  for split, n in (("train", 600), ("valid", 60), ("test", 60)):
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12), p=p)) for _ in range(n)]
    (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return str(d)
