"""Typed parameters of the operational flows (backfill, evaluate-and-promote, batch-score).

Prefect validates flow parameters against these models and the UI renders them as forms; a bad value
fails before any work starts with pydantic's message (field path + what was wrong).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.models.config import TrainConfig
from recsys.models.dask_options import DaskOptions  # noqa: F401 - the flows' parameter type


class BackfillParams(BaseModel):
    """Train + evaluate at every cutoff in [start, end] stepping `step_days`; data up to each cutoff only."""

    model_config = ConfigDict(extra="forbid")

    start: dt.date = Field(..., description="first cutoff (UTC date, exclusive end of the data seen)")
    end: dt.date = Field(..., description="last cutoff (inclusive if on the step grid)")
    step_days: int = Field(7, ge=1, le=366, description="days between cutoffs")
    config: TrainConfig = Field(default_factory=TrainConfig, description="training config for every cutoff "
                                                                           "(its split.cutoff is replaced)")
    promote: bool = Field(False, description="let each cutoff's gate move `champion` (off for backfills)")
    force: bool = Field(False, description="retrain cutoffs already done with the same config and replace "
                                           "their MLflow runs (otherwise they are skipped)")
    max_parallel: int = Field(1, ge=1, le=32, description="cutoffs trained at once without Dask")
    dask: DaskOptions = Field(default_factory=DaskOptions)

    @model_validator(mode="after")
    def _range(self) -> "BackfillParams":
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        n = (self.end - self.start).days // self.step_days + 1
        if n > 200:
            raise ValueError(f"{n} cutoffs from {self.start} to {self.end} every {self.step_days} days; "
                             "at most 200 per backfill")
        return self

    def cutoffs(self) -> list[str]:
        n = (self.end - self.start).days // self.step_days + 1
        return [(self.start + dt.timedelta(days=i * self.step_days)).isoformat() for i in range(n)]

    def config_at(self, cutoff: str) -> TrainConfig:
        """The per-cutoff training config: this cutoff, this backfill's promotion switch."""
        split = dataclasses.replace(self.config.split, cutoff=cutoff)
        return self.config.model_copy(update={"split": split, "promote": self.promote})


class EvaluatePromoteParams(BaseModel):
    """Re-run the promotion gate for an already registered version on the newest window."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, pattern=r"^[1-9][0-9]*$",
                                description="registered version to challenge the champion; default the newest")
    config: TrainConfig = Field(default_factory=TrainConfig, description="data, window, gate and model name")


class BatchScoreParams(BaseModel):
    """Top-k for every recently active user, written to Parquet and SQLite under $RECSYS_HOME/batch."""

    model_config = ConfigDict(extra="forbid")

    registered_model: str = Field("recsys", min_length=1)
    alias: str = Field("champion", min_length=1, description="registry alias to score with")
    version: str | None = Field(None, pattern=r"^[1-9][0-9]*$", description="pin a version instead of the alias")
    k: int = Field(20, ge=1, le=200)
    active_days: int = Field(28, ge=1, le=3650, description="users with an event in the last N days")
    batch_size: int = Field(2000, ge=1, le=1_000_000, description="users per recommend() call")
    partitions: int = Field(1, ge=1, le=256, description="user partitions scored as separate tasks")
    data_dir: str | None = Field(None, description="event store; default $RECSYS_HOME/data")
    output_dir: str | None = Field(None, description="default $RECSYS_HOME/batch")
    dask: DaskOptions = Field(default_factory=DaskOptions)
