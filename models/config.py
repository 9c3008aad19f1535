"""The typed configuration of a training run. Prefect validates it, the UI renders it as a form."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.features.exposure import ExposureParams
from recsys.features.split import SplitParams
from recsys.models.evaluation import EvaluationParams
from recsys.models.gate import GateParams
from recsys.models.metrics import gate_metric_problem
from recsys.models.dask_options import DaskOptions
from recsys.models.tuning import SearchParams
from recsys.models.two_stage import TwoStageParams


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: str | None = Field(None, description="event store; default $RECSYS_HOME/data")
    experiment: str = Field("recsys", min_length=1)
    registered_model: str = Field("recsys", min_length=1)
    k: int = Field(10, ge=1, le=200, description="list length evaluated and logged (metrics @k)")
    split: SplitParams = Field(default_factory=SplitParams)
    model: TwoStageParams = Field(default_factory=TwoStageParams)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams,
                                         description="which test-window users evaluation and the gate score")
    gate: GateParams = Field(default_factory=GateParams)
    tuning: SearchParams = Field(default_factory=SearchParams,
                                 description="off, quick (small grids on the label window) or full (Optuna search "
                                             "on earlier windows within a time budget, reused while the data fits)")
    feedback: ExposureParams = Field(default_factory=ExposureParams,
                                     description="learn from the service's impressions: exposure features and "
                                                 "shown-and-ignored negatives (no impressions: no effect)")
    promote: bool = Field(True, description="move the champion alias when the gate passes")
    max_rejected_share: float = Field(0.05, ge=0.0, le=1.0)
    dask: DaskOptions = Field(default_factory=DaskOptions,
                              description="train on a Dask cluster: {address: tcp://...} or {local_workers: N}; "
                                          "default: one process")

    @model_validator(mode="after")
    def _gate_metric_exists(self) -> "TrainConfig":
        # checked with the parameters, before any work (not after a version was registered)
        problem = gate_metric_problem(self.gate.metric, self.k)
        if problem:
            raise ValueError(f"gate.metric {problem}")
        return self

    def config_hash(self) -> str:
        payload = {"k": self.k, "split": asdict(self.split), "model": asdict(self.model), "gate": asdict(self.gate),
                   "evaluation": asdict(self.evaluation), "tuning": asdict(self.tuning)}
        if not self.model.item_item_sources:  # off: the hash of every configuration from before they existed
            payload["model"] = {k: v for k, v in payload["model"].items() if k != "item_item_sources"}
            payload["model"]["recall"] = {k: v for k, v in payload["model"]["recall"].items()
                                          if k not in ("ease", "rp3beta")}
        if self.feedback.enabled:  # off: the hash of every configuration from before feedback existed
            payload["feedback"] = asdict(self.feedback)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def flat_params(self) -> dict[str, object]:
        """Flattened `section.field` params for MLflow."""
        out: dict[str, object] = {"k": self.k, "promote": self.promote}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for key, v in value.items():
                    walk(f"{prefix}.{key}", v)
            else:
                out[prefix] = value

        for section in ("split", "model", "evaluation", "gate", "tuning", "feedback"):
            walk(section, asdict(getattr(self, section)))
        return out
