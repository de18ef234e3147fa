"""Corpora and vocabulary shared by the LM and VAE examples.

Two sources:

* The default corpus needs no download: the Python standard library's own
  source (``.py`` files under ``sysconfig.get_paths()["stdlib"]``, skipping
  ``site-packages`` and every directory whose name contains ``test``),
  tokenised into words and single symbols (``\\w+|[^\\w\\s]``), one sentence
  per non-empty line. About 2.8M tokens and 50k types. Files are split
  deterministically by a CRC32 of their relative path: 90% train, 5% valid,
  5% test.
* ``data_dir`` with ``train.txt``, ``valid.txt`` and ``test.txt`` (PTB or
  WikiText layout): tokens are whitespace-separated, one sentence per line.

The vocabulary is sorted by decreasing training-set frequency (adaptive
softmax needs frequent words first) and includes ``<eos>`` (end of line) and
``<unk>`` (every word outside the vocabulary). Its counts give the adaptive
softmax cutoffs and the Huffman tree.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import sysconfig
import zlib

import numpy as np

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize_python_line(line: str) -> list[str]:
  """Splits one line of Python source into identifiers/numbers and symbols."""
  return _TOKEN_RE.findall(line)


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted ``.py`` files of the standard library, tests and site-packages excluded."""
  root = root or sysconfig.get_paths()["stdlib"]
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(
        d for d in dirnames
        if d not in ("site-packages", "dist-packages", "__pycache__")
        and "test" not in d)
    files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                 if f.endswith(".py"))
  return files


def _split_of(relpath: str) -> str:
  bucket = zlib.crc32(relpath.encode("utf-8")) % 100
  return "train" if bucket < 90 else ("valid" if bucket < 95 else "test")


def load_stdlib_corpus(root: str | None = None) -> dict[str, list[list[str]]]:
  """The default corpus: ``{split: [sentence tokens, ...]}``."""
  root = root or sysconfig.get_paths()["stdlib"]
  corpus = {s: [] for s in SPLITS}
  for path in stdlib_files(root):
    split = corpus[_split_of(os.path.relpath(path, root).replace(os.sep, "/"))]
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        tokens = tokenize_python_line(line)
        if tokens:
          split.append(tokens)
  return corpus


def load_text_corpus(data_dir: str) -> dict[str, list[list[str]]]:
  """Reads ``train.txt``/``valid.txt``/``test.txt`` (whitespace tokens, one sentence a line).

  Raises:
    FileNotFoundError: ``data_dir`` or one of the three files is missing.
    ValueError: a file holds no tokens.
  """
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data_dir={data_dir!r} is not a directory; expected a folder holding "
        "train.txt, valid.txt and test.txt (or leave data_dir empty for the "
        "built-in standard-library corpus)")
  corpus = {}
  for split in SPLITS:
    path = os.path.join(data_dir, f"{split}.txt")
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"data_dir={data_dir!r} has no {split}.txt; expected train.txt, "
          "valid.txt and test.txt")
    with open(path, encoding="utf-8", errors="replace") as f:
      corpus[split] = [t for t in (line.split() for line in f) if t]
    if not corpus[split]:
      raise ValueError(f"{path} is empty (no tokens); every split needs text")
  return corpus


def load_corpus(data_dir: str = "") -> dict[str, list[list[str]]]:
  """``data_dir`` corpus when given, else the standard-library corpus."""
  corpus = load_text_corpus(data_dir) if data_dir else load_stdlib_corpus()
  for split in SPLITS:
    if not corpus[split]:
      raise ValueError(f"the {split} split of the corpus is empty")
  return corpus


@functools.lru_cache(maxsize=2)
def cached_corpus(data_dir: str = "") -> dict[str, list[list[str]]]:
  """``load_corpus`` memoised per process (several runs in one process read it once)."""
  return load_corpus(data_dir)


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Words sorted by decreasing training frequency; ``counts[i]`` >= 1."""
  words: tuple[str, ...]
  counts: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

  def __len__(self) -> int:
    return len(self.words)

  @property
  def eos_id(self) -> int:
    return self._index[EOS]

  @property
  def unk_id(self) -> int:
    return self._index[UNK]

  def encode(self, tokens: list[str]) -> list[int]:
    unk = self.unk_id
    return [self._index.get(t, unk) for t in tokens]

  def decode(self, ids) -> list[str]:
    return [self.words[int(i)] for i in ids]


def build_vocab(sentences: list[list[str]], *, max_size: int = 0,
                min_count: int = 1) -> Vocab:
  """Frequency-sorted vocabulary (ties broken alphabetically, so deterministic).

  Args:
    sentences: training sentences.
    max_size: keep at most this many entries including ``<eos>`` and
      ``<unk>`` (0: no limit).
    min_count: words seen fewer times become ``<unk>``.
  """
  if max_size < 0 or (max_size and max_size < 3):
    raise ValueError(f"max_vocab={max_size} must be 0 (no limit) or >= 3")
  if min_count < 1:
    raise ValueError(f"min_count={min_count} must be >= 1")
  counts = collections.Counter()
  for s in sentences:
    counts.update(s)
  for special in (EOS, UNK):
    counts.pop(special, None)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  kept = [(w, c) for w, c in ranked if c >= min_count]
  if max_size:
    kept = kept[:max_size - 2]
  num_unk = sum(counts.values()) - sum(c for _, c in kept)
  kept += [(EOS, len(sentences)), (UNK, max(num_unk, 1))]
  kept.sort(key=lambda kv: -kv[1])  # stable: words keep their order
  words, freqs = zip(*kept)
  return Vocab(tuple(words), np.asarray(freqs, np.int64))


def encode_stream(vocab: Vocab, sentences: list[list[str]]) -> np.ndarray:
  """All sentences as one int32 token stream, ``<eos>`` after each."""
  eos = vocab.eos_id
  ids = []
  for s in sentences:
    ids.extend(vocab.encode(s))
    ids.append(eos)
  return np.asarray(ids, np.int32)
