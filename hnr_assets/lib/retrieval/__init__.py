"""Retrieval engines: BM25 (Lucene through Anserini, bm25s) and dense exact search."""
