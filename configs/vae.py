"""Text VAE seq2seq (Bowman et al. 2016) on lines of the standard-library corpus.

LSTM encoder/decoder, KL weight annealed linearly from 0 to 1, word dropout and
free bits against posterior collapse, decoder output through any head
(``--config.head=...``). A few minutes on a 2-core CPU.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Decoder output layer: "full" | "adaptive" | "hsigmoid" | "sampled".
  config.head = "adaptive"
  # hsigmoid tree: "default" (complete binary tree) or "huffman" (from word counts).
  config.hsigmoid_tree = "default"
  # Adaptive softmax cluster boundaries (ids sorted by frequency), vocabulary size excluded.
  config.adaptive_cutoffs = (1000, 4000)
  # Adaptive softmax: cluster i projects to hidden_dim / div_value**(i+1) features.
  config.adaptive_div_value = 4.0
  # Sampled softmax: negatives drawn per step (log-uniform); evaluation is exact.
  config.sampled_num_samples = 512
  # Folder with train.txt/valid.txt/test.txt; "" uses the Python standard-library corpus.
  config.data_dir = ""
  # Keep at most this many vocabulary entries (0: all); the rest map to <unk>.
  config.max_vocab = 10000
  # Words seen fewer times in train map to <unk>.
  config.min_count = 1
  # Shortest sentence (line) kept, in tokens.
  config.min_len = 3
  # Longest sentence kept, in tokens (decoder length is max_len + 1 with <eos>).
  config.max_len = 16
  # Global batch size (sentences per step), split across devices.
  config.batch_size = 32
  # Word embedding size (shared by encoder and decoder).
  config.emb_dim = 128
  # Encoder/decoder LSTM state size = head input features.
  config.hidden_dim = 128
  # Latent code size.
  config.latent_dim = 16
  # Probability of replacing a decoder input word by <unk> (Bowman et al.'s word dropout).
  config.word_dropout = 0.3
  # Steps over which the KL weight rises linearly from 0 to 1.
  config.kl_anneal_steps = 1500
  # Free bits (Kingma et al. 2016): nats per latent dimension of batch-mean KL that cost nothing.
  config.free_bits = 0.125
  # Peak AdamW learning rate.
  config.learning_rate = 2e-3
  # Linear warm-up steps to the peak learning rate.
  config.warmup_steps = 100
  # Global gradient-norm clipping threshold.
  config.grad_clip_norm = 1.0
  # AdamW decoupled weight decay.
  config.weight_decay = 0.0
  # Total training steps.
  config.num_train_steps = 3000
  # Validation every this many steps (and at the end).
  config.eval_every_steps = 500
  # Validate on the first this many valid sentences (0: all).
  config.eval_max_sentences = 2048
  # Progress-bar and metrics-file update interval (steps).
  config.log_every_steps = 20
  # Orbax checkpoint interval (steps); the run resumes from the latest.
  config.checkpoint_every_steps = 500
  # Greedy sentences decoded from the prior after training.
  config.num_samples = 8
  # Seed for parameters, dropout, latents, sampling and batch order.
  config.seed = 0
  # Devices to use for data parallelism (0: all local devices).
  config.num_devices = 0
  return config
