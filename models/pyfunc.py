"""The MLflow pyfunc that carries a whole `TwoStageRecommender` (the one module in models/ that
imports mlflow). Input: a frame with `user_id`; param `k`. Output: one row per recommendation."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from recsys.models.two_stage import TwoStageRecommender

ARTIFACT_KEY = "recommender"
OUTPUT_COLUMNS = ["user_id", "rank", "item_id", "score", "strategy"]


class RecsysModel(mlflow.pyfunc.PythonModel):
    def __init__(self) -> None:
        self.recommender: TwoStageRecommender | None = None

    def load_context(self, context) -> None:
        self.recommender = TwoStageRecommender.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        if "user_id" not in model_input.columns:
            raise ValueError(f"input needs a 'user_id' column; got {list(model_input.columns)}")
        return recommendations_frame(self.recommender.recommend_ids(model_input["user_id"].astype(str).tolist(), k))


def recommendations_frame(recs: list[dict]) -> pd.DataFrame:
    rows = [(r["user_id"], rank + 1, item, score, r["strategy"])
            for r in recs for rank, (item, score) in enumerate(zip(r["items"], r["scores"]))]
    # rank as float64: MLflow's schema treats integer columns as non-nullable
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS).astype({"rank": "float64", "score": "float64"})
