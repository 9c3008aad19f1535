"""Evaluate-and-promote: re-run the promotion gate for a registered version on the newest window.

No training: the challenger (a given or the newest registered version) and the champion are both loaded
from the registry and scored on the same newest test window; the alias moves only if the challenger wins.
Gates never overlap: the `promotion-gate` task tag has a Prefect concurrency limit of 1 and the gate
holds a file lock as well.
"""

from __future__ import annotations

from prefect import flow

from recsys.models.ops_config import EvaluatePromoteParams
from recsys.tasks.ops import resolve_challenger
from recsys.tasks.reporting import publish_summary
from recsys.tasks.gate import promotion_gate
from recsys.tasks.training import load_data, split_data


@flow(name="evaluate-and-promote", log_prints=True)
def evaluate_and_promote(params: EvaluatePromoteParams = EvaluatePromoteParams()) -> dict:
    config = params.config
    challenger = resolve_challenger(config.registered_model, params.version)
    data = load_data(config)
    split = split_data(data, config.split)
    decision = promotion_gate(challenger["run_id"], challenger["version"], data, split, config)
    publish_summary(f"evaluate-and-promote: {config.registered_model} v{challenger['version']}",
                    challenger["run_id"], None, config.k, config.registered_model, challenger["version"],
                    decision.as_dict(), key="gate-summary")
    print(f"{config.registered_model} v{challenger['version']}: {decision.reason}")
    return {"version": challenger["version"], "run_id": challenger["run_id"], "promoted": decision.promote,
            "reason": decision.reason}
