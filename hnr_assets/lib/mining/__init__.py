"""Mining stage: hard negatives from BM25 hits and a cross-encoder; the shared negative-set contract."""
