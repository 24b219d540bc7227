"""Process settings for the worker, the starter and the demo, read once from the environment.

Every setting has an environment variable (``UNSTUCK_*``) and, in ``worker.py`` and
``starter.py``, a command-line flag that overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

#: Custom search attributes every ticket upserts; registered when the dev server starts
#: and documented for production (``temporal operator search-attribute create``).
SEARCH_ATTRIBUTES: dict[str, str] = {
    "TicketStatus": "Keyword",
    "Phase": "Keyword",
    "OpenTasks": "Int",
    "StuckSince": "Datetime",
    "Diagnoses": "Int",
    "Restarts": "Int",
    "AnomalyScore": "Double",
}


class Settings(BaseModel):
    """Where Temporal and the ledger live, and where local files go."""

    temporal_address: str = Field(default="127.0.0.1:7233", description="host:port of Temporal")
    namespace: str = "default"
    task_queue: str = "unstuck"
    database_url: str = Field(
        default="", description="SQLAlchemy URL of the ledger; empty = SQLite under data_dir"
    )
    data_dir: Path = Path(".unstuck")
    ui_port: int = 8233
    start_dev_server: bool = Field(
        default=True, description="start `temporal server start-dev` when nothing answers"
    )
    otel_exporter: Literal["none", "console", "otlp", "file"] = Field(
        default="file", description="where OpenTelemetry spans go (file = <data_dir>/spans.jsonl)"
    )
    metrics_address: str = Field(
        default="", description="host:port of the Prometheus endpoint; empty = no metrics"
    )

    @property
    def ledger_url(self) -> str:
        """The ledger's database URL (SQLite file under the data directory by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"

    @property
    def host(self) -> str:
        return self.temporal_address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.temporal_address.rsplit(":", 1)[1])

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``UNSTUCK_*`` environment variables; ``overrides`` (not None) win."""
        env = os.environ
        values: dict[str, object] = {}
        mapping = {
            "temporal_address": "UNSTUCK_TEMPORAL_ADDRESS",
            "namespace": "UNSTUCK_NAMESPACE",
            "task_queue": "UNSTUCK_TASK_QUEUE",
            "database_url": "UNSTUCK_DATABASE_URL",
            "data_dir": "UNSTUCK_DATA_DIR",
            "ui_port": "UNSTUCK_UI_PORT",
            "start_dev_server": "UNSTUCK_START_DEV_SERVER",
            "otel_exporter": "UNSTUCK_OTEL_EXPORTER",
            "metrics_address": "UNSTUCK_METRICS_ADDRESS",
        }
        for field, var in mapping.items():
            if var in env and env[var] != "":
                values[field] = env[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
