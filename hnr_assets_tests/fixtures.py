"""Tiny BEIR-layout datasets written by the tests (real files, deterministic content).

Documents are built from topic vocabularies, so lexical and dense retrieval have something real to
find: each query shares words with its relevant documents and fewer with the others.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "vaccines": "vaccine antibody immune response dose trial influenza antigen booster efficacy",
    "climate": "carbon emissions warming temperature ocean ice sheet greenhouse climate model",
    "genetics": "gene mutation dna sequencing expression protein chromosome variant genome",
    "cardiology": "heart cardiac artery blood pressure statin cholesterol infarction stroke",
    "oncology": "tumor cancer chemotherapy metastasis radiation biopsy carcinoma survival",
    "neuroscience": "neuron brain synapse cortex memory dopamine plasticity cognition",
    "nutrition": "diet vitamin fiber sugar obesity calorie protein intake metabolism",
    "aerodynamics": "wing lift drag airflow velocity pressure boundary layer turbulence",
}
FILLER = [
    "the",
    "study",
    "reports",
    "that",
    "in",
    "a",
    "cohort",
    "of",
    "patients",
    "we",
    "observed",
    "results",
    "with",
    "significant",
    "effect",
]


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple]]) -> Path:
    """Write a BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc in corpus:
            fh.write(json.dumps(doc) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for query in queries:
            fh.write(json.dumps(query) + "\n")
    for split, rows in qrels.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, doc_id, grade in rows:
                fh.write(f"{qid}\t{doc_id}\t{grade}\n")
    return folder


def make_tiny_dataset(folder: Path, seed: int = 0, docs_per_topic: int = 6, prefix: str = "d") -> dict:
    """A tiny dataset: `docs_per_topic` documents per topic, 2 train and 1 test query per topic.

    Returns:
        Counts: documents, train/test queries and judgements.
    """
    rng = random.Random(seed)
    corpus, queries, train, test = [], [], [], []
    for t_index, (topic, vocab) in enumerate(TOPICS.items()):
        words = vocab.split()
        doc_ids = []
        for i in range(docs_per_topic):
            doc_id = f"{prefix}{t_index}-{i}"
            body = " ".join(rng.choice(words + FILLER) for _ in range(40))
            corpus.append({"_id": doc_id, "title": f"{topic} report {i}", "text": f"{body}."})
            doc_ids.append(doc_id)
        for q in range(3):
            qid = f"q{t_index}-{q}"
            terms = rng.sample(words, 3)
            queries.append({"_id": qid, "text": f"what is known about {' '.join(terms)} in {topic}?"})
            relevant = rng.sample(doc_ids, 2 if q == 0 else 1)
            rows = [(qid, d, 1) for d in relevant]
            (test if q == 2 else train).extend(rows)
    write_beir(folder, corpus, queries, {"train": train, "test": test})
    return {
        "documents": len(corpus),
        "test_queries": len({r[0] for r in test}),
        "test_judgements": len(test),
        "train_pairs": len(train),
        "train_queries": len({r[0] for r in train}),
    }
