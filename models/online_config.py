"""Typed parameters of the online flows: `online-metrics` and `ab-decision` (flows/feedback.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from recsys.features.attribution import METRIC_OUTCOMES, RECOMMENDATION_ENDPOINTS
from recsys.models.ab_test import ABConfig, Guardrail


class OnlineParams(BaseModel):
    """What both flows read: impressions joined with the events that followed them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("recsys", min_length=1, description="registered model")
    impressions_dir: str | None = Field(None, description="the service's impressions; default $RECSYS_HOME/impressions")
    data_dir: str | None = Field(None, description="event store; default $RECSYS_HOME/data")
    days: int = Field(14, ge=1, le=366, description="impressions of the last N days (UTC) are analysed")
    k: int = Field(10, ge=1, le=100, description="positions 1..k count as shown (CTR@k, conversion@k)")
    attribution_hours: float = Field(24.0, gt=0, description="an event counts for a shown item this long after")
    endpoints: tuple[Literal["recommendations", "session", "search", "similar"], ...] = Field(RECOMMENDATION_ENDPOINTS, min_length=1,
                                       description="which responses count: recommendations, session, search, similar")
    experiment: str = Field("online", min_length=1, description="MLflow experiment of the online runs")


class ABDecisionParams(OnlineParams):
    """The sequential test of `recsys.models.ab_test` and what happens with its outcome."""

    metric: Literal["ctr", "add_to_cart_conversion", "purchase_conversion", "revenue_per_impression"] = Field(
        "purchase_conversion", description=f"primary metric: one of {', '.join(METRIC_OUTCOMES)}")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="error rate of a promotion, valid under daily looks")
    min_lift: float = Field(0.0, ge=0, description="relative margin: challenger > (1 + min_lift) x champion")
    challenger_share: float | None = Field(None, gt=0, lt=1, description="the serve --ab-share; default: "
                                           "recorded by `recsys ab-start` on the challenger version")
    srm_threshold: float = Field(0.001, gt=0, lt=1, description="sample-ratio check fails below this p-value")
    min_users: int = Field(100, ge=2, description="users per arm before any decision")
    max_ctr_drop: float | None = Field(0.10, ge=0, description="guardrail: CTR@k may not drop more (relative)")
    max_revenue_drop: float | None = Field(0.10, ge=0, description="guardrail: revenue per impression, relative")
    promote: bool = Field(True, description="move `champion` to the challenger when the test clears")
    end_on_loss: bool = Field(True, description="remove the `challenger` alias when it is shown not to clear")

    def ab_config(self, challenger_share: float) -> ABConfig:
        guards = [Guardrail(name, drop) for name, drop in (("ctr", self.max_ctr_drop),
                                                            ("revenue_per_impression", self.max_revenue_drop))
                  if drop is not None and name != self.metric]
        return ABConfig(metric=self.metric, alpha=self.alpha, min_lift=self.min_lift,
                        challenger_share=challenger_share, srm_threshold=self.srm_threshold,
                        min_users=self.min_users, guardrails=tuple(guards))
