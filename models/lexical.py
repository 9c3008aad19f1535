"""Lexical retrieval for search: BM25 (`bm25s`) over stemmed item text, with typo tolerance. Pure.

Why these libraries: `bm25s` is a maintained, numpy/scipy-only BM25 whose index is a sparse matrix of
precomputed term scores (a query is one column sum, ~0.1 ms on a few thousand items), saved as plain
.npy/.json files (no pickle); PyStemmer (Snowball) maps "bags"/"bag" and "lamps"/"lamp" to one term;
`rapidfuzz` finds the vocabulary word within a small edit distance (optimal string alignment: a swap of
neighbouring letters is one edit) of an unknown query word
("bakpack" -> "backpack") in microseconds. Item text = title + category + brand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import bm25s
import numpy as np
import scipy.sparse as sp
import Stemmer
from rapidfuzz import process
from rapidfuzz.distance import OSA

_TOKEN = re.compile(r"(?u)\b\w+\b")
_STOPWORDS = frozenset(bm25s.stopwords.STOPWORDS_EN)
FIELDS = ("title", "category", "brand")


def max_typo_distance(word: str) -> int:
    """Edits tolerated in an unknown query word: none under 4 letters, 1 up to 7, 2 beyond."""
    return 0 if len(word) < 4 else 1 if len(word) <= 7 else 2


class Analyzer:
    """lowercase -> word tokens -> stopwords out -> Snowball English stems."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")

    def __getstate__(self) -> dict:  # the Snowball stemmer is a C object: pickled as "make a new one"
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def words(self, text: str) -> list[str]:
        return [w for w in _TOKEN.findall(str(text).lower()) if w not in _STOPWORDS]

    def stems(self, words: list[str]) -> list[str]:
        return self._stemmer.stemWords(words)


class LexicalIndex:
    """BM25 over one document per item index, plus per-field term matrices for match features."""

    def __init__(self, bm25: bm25s.BM25, words: list[str], fields: dict[str, sp.csc_matrix]):
        self.bm25 = bm25
        self.words = words  # the catalogue's surface words (typo correction targets)
        self.fields = fields  # field -> [n_items, n_terms] binary, term ids = bm25's vocabulary ids
        self.analyzer = Analyzer()
        self.n_items = int(bm25.scores["num_docs"])
        self.terms = [""] * len(bm25.vocab_dict)  # term id -> stem
        for term, j in bm25.vocab_dict.items():
            self.terms[j] = term

    @classmethod
    def fit(cls, titles, categories, brands=None) -> "LexicalIndex":
        an = Analyzer()
        n = len(titles)
        brands = brands if brands is not None else [""] * n
        field_words = {"title": [an.words(t) for t in titles], "category": [an.words(c) for c in categories],
                       "brand": [an.words(b) for b in brands]}
        field_stems = {f: [an.stems(ws) for ws in docs] for f, docs in field_words.items()}
        docs = [field_stems["title"][i] + field_stems["category"][i] + field_stems["brand"][i] for i in range(n)]
        bm25 = bm25s.BM25()
        bm25.index(docs, show_progress=False)
        words = sorted({w for docs_ in field_words.values() for ws in docs_ for w in ws})
        return cls(bm25, words, _field_matrices(field_stems, bm25.vocab_dict, n))

    # ---- queries ------------------------------------------------------------------------
    def _analysed(self, query: str) -> list[tuple[str, str]]:
        """(surface word, stem) per query word, an unknown word replaced by the closest catalogue word
        within `max_typo_distance` edits (kept as typed when there is none)."""
        vocab = self.bm25.vocab_dict
        out = []
        words = self.analyzer.words(query)
        for word, stem in zip(words, self.analyzer.stems(words)):
            if stem not in vocab and max_typo_distance(word) > 0:
                hit = process.extractOne(word, self.words, scorer=OSA.distance,
                                         score_cutoff=max_typo_distance(word))
                if hit is not None:
                    word, stem = hit[0], self.analyzer.stems([hit[0]])[0]
            out.append((word, stem))
        return out

    def parse(self, query: str) -> tuple[np.ndarray, str]:
        """The query's vocabulary ids (stemmed; an unknown word replaced by the closest catalogue word within
        `max_typo_distance` edits, dropped when there is none) and the query with its typos corrected (what
        the semantic encoder reads: a typo would otherwise embed as a different word; words no catalogue
        word is close to stay as typed). One pass: the typo search runs once per word."""
        vocab = self.bm25.vocab_dict
        ids: list[int] = []
        analysed = self._analysed(query)
        for _, stem in analysed:
            if stem in vocab and vocab[stem] not in ids:
                ids.append(vocab[stem])
        return np.asarray(ids, dtype=np.int64), " ".join(word for word, _ in analysed)

    def term_ids(self, query: str) -> np.ndarray:
        return self.parse(query)[0]

    def corrected(self, query: str) -> str:
        return self.parse(query)[1]

    def scores(self, term_ids: np.ndarray) -> np.ndarray:
        """BM25 score of every item for the query terms (zeros when there are none)."""
        if len(term_ids) == 0:
            return np.zeros(self.n_items, dtype=np.float32)
        return np.asarray(self.bm25.get_scores_from_ids(term_ids.tolist()), dtype=np.float32)

    def field_matches(self, term_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(items), len(FIELDS)]: share of the query terms found in each field of each item."""
        out = np.zeros((len(items), len(FIELDS)), dtype=np.float32)
        if len(term_ids) == 0 or len(items) == 0:
            return out
        # walk the terms' postings (CSC columns) directly: scipy's fancy indexing cost ~5 ms per query
        for j, f in enumerate(FIELDS):
            m = self.fields[f]
            hits = np.zeros(self.n_items, dtype=np.float32)
            for t in term_ids:
                hits[m.indices[m.indptr[t]:m.indptr[t + 1]]] += 1.0
            out[:, j] = hits[items] / len(term_ids)
        return out

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.bm25.save(str(directory / "bm25"), show_progress=False)
        (directory / "words.json").write_text(json.dumps(self.words))
        sp.save_npz(directory / "fields.npz", sp.hstack([self.fields[f] for f in FIELDS]).tocsr(), compressed=True)

    @classmethod
    def load(cls, directory: Path) -> "LexicalIndex":
        directory = Path(directory)
        bm25 = bm25s.BM25.load(str(directory / "bm25"), show_progress=False, verbosity=0)
        stacked = sp.load_npz(directory / "fields.npz").tocsc()
        width = stacked.shape[1] // len(FIELDS)
        fields = {f: stacked[:, j * width:(j + 1) * width].tocsc() for j, f in enumerate(FIELDS)}
        return cls(bm25, json.loads((directory / "words.json").read_text()), fields)


def _field_matrices(field_stems: dict[str, list[list[str]]], vocab: dict[str, int],
                    n_items: int) -> dict[str, sp.csc_matrix]:
    out = {}
    for f, docs in field_stems.items():
        rows = [i for i, ws in enumerate(docs) for w in set(ws) if w in vocab]
        cols = [vocab[w] for ws in docs for w in set(ws) if w in vocab]
        out[f] = sp.csc_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_items, len(vocab)))
    return out
