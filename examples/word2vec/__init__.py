"""word2vec skip-gram with NCE / negative sampling or Huffman hierarchical softmax."""
