"""Machinery every family builds on: argument checks and the dtype policy
(:mod:`.checks`), sharding helpers (:mod:`.sharding`), the chunked statistics walk
over a ``[V, D]`` matrix (:mod:`.walk`), the exact softmax over it on one device or
vocabulary-parallel (:mod:`.linear`), and the head base (:mod:`.heads`)."""
