"""Where a flow's Dask work runs: a running cluster's scheduler, a throwaway local cluster, or nowhere."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DaskOptions(BaseModel):
    """Where fan-out work runs. Neither set: in-process threads (`max_parallel` at a time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(None, description="scheduler of an existing Dask cluster, e.g. "
                                                  "tcp://scheduler:8786 (workers need this repo + env)")
    local_workers: int = Field(0, ge=0, le=64, description="start a throwaway local Dask cluster with this "
                                                          "many workers (0 = none) when no address is given")
    processes: bool = Field(False, description="local cluster workers as processes (else threads)")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v.strip() and "://" not in v:
            raise ValueError(f"'{v}' is not a Dask scheduler address; expected e.g. tcp://host:8786")
        return v.strip() or None if v is not None else None

    @property
    def enabled(self) -> bool:
        return bool(self.address) or self.local_workers > 0
