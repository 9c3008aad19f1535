"""TF-IDF over item title + category (scikit-learn): search queries, content neighbours, cold items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer


class TextIndex:
    """Rows of `matrix` are L2-normalised TF-IDF vectors, one per item index."""

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sp.csr_matrix):
        self.vectorizer = vectorizer
        self.matrix = matrix

    @classmethod
    def fit(cls, titles: np.ndarray, categories: np.ndarray, min_df: int = 1) -> "TextIndex":
        docs = [f"{t} {c} {c}" for t, c in zip(titles, categories)]  # category counted twice: a strong hint
        vec = TfidfVectorizer(lowercase=True, min_df=min_df, sublinear_tf=True, dtype=np.float32,
                              token_pattern=r"(?u)\b\w+\b")
        return cls(vec, vec.fit_transform(docs).tocsr())

    @property
    def vocabulary(self) -> dict[str, int]:
        return self.vectorizer.vocabulary_

    def query_vector(self, query: str) -> sp.csr_matrix:
        return self.vectorizer.transform([query])

    def search(self, query: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n item indices by cosine similarity to the query (only items sharing a term)."""
        scores = (self.matrix @ self.query_vector(query).T).toarray().ravel()
        return _top(scores, n)

    def similar(self, item: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Content neighbours of one item, itself excluded."""
        scores = (self.matrix @ self.matrix[item].T).toarray().ravel()
        scores[item] = 0.0
        return _top(scores, n)

    def profile_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Similarity of every item to a weighted profile of `items` (e.g. what a user touched)."""
        if len(items) == 0:
            return np.zeros(self.matrix.shape[0], dtype=np.float32)
        profile = sp.csr_matrix(np.asarray(weights, dtype=np.float32)[None, :]) @ self.matrix[items]
        norm = np.sqrt(profile.multiply(profile).sum())
        if norm == 0:
            return np.zeros(self.matrix.shape[0], dtype=np.float32)
        return (self.matrix @ (profile / norm).T).toarray().ravel().astype(np.float32)


def _top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    positive = np.flatnonzero(scores > 0)
    if len(positive) == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    order = positive[np.argsort(-scores[positive], kind="stable")[:n]]
    return order.astype(np.int64), scores[order].astype(np.float32)
