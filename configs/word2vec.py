"""Default word2vec experiment: skip-gram with negative sampling on the standard-library corpus.

Trains in about a minute on a 2-core CPU (the first 1M training tokens,
a 4k-word vocabulary) and prints the nearest neighbours of a few identifiers.
Override any field on the command line, e.g. ``--config.loss=hsigmoid``.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Output layer: "neg" (negative sampling), "nce" (tf.nn.nce_loss) or "hsigmoid" (Huffman tree).
  config.loss = "neg"
  # Noise classes per step (shared by the batch), drawn from unigram counts ** distortion.
  config.num_sampled = 64
  # word2vec's 0.75: flattens the unigram distribution so rare words are drawn more often.
  config.distortion = 0.75
  # Folder with train.txt/valid.txt/test.txt; "" uses the Python standard-library corpus.
  config.data_dir = ""
  # Use only the first this many training tokens (0: all of them).
  config.max_tokens = 1_000_000
  # Keep at most this many vocabulary entries (the rest map to <unk>).
  config.max_vocab = 4000
  # Words seen fewer times in train map to <unk>.
  config.min_count = 5
  # Largest skip-gram window; each centre word uses a random window in [1, window].
  config.window = 4
  # Frequent-word subsampling threshold t (Mikolov et al. 2013); 0 keeps every token.
  config.subsample = 1e-4
  # Embedding size.
  config.emb_dim = 64
  # (centre, context) pairs per step.
  config.batch_size = 1024
  # Passes over the skip-gram pairs.
  config.num_epochs = 3
  # Adam learning rate.
  config.learning_rate = 3e-3
  # Progress-bar and metrics-file update interval (steps).
  config.log_every = 1000
  # Orbax checkpoint interval (steps); Ctrl-C saves too, and the same command resumes.
  config.checkpoint_every_steps = 2000
  # Words whose nearest neighbours are printed at the end.
  config.queries = ("self", "True", "append", "len", "str", "return", "os", "0")
  # Neighbours shown per query word.
  config.num_neighbours = 8
  # Random seed (initialisation, pair order, negative samples).
  config.seed = 0
  return config
