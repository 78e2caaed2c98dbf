"""Node log output: the default text lines, or one JSON object per line
(`python -m node --log-format json`, or `[log] format = "json"` in the config).

JSON lines are for log shippers (Loki, Elasticsearch, journald's JSON mode): a
record is never split across lines, so a multi-line traceback becomes one
escaped string field. The fields are stable so queries and alerts can rely on
them: time (RFC 3339, UTC), level, logger, node, event, and partition /
request_id / exc_info only when known. Messages already keep patient data out
(DEVELOPERS.md); this module adds no field that could carry any.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The id of the RPC being served (set by node.auth.interceptor for every call),
# so lines logged while serving it can be joined with the client's request id
# and the audit log. Empty outside a call.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("medkv_request_id", default="")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    `extra={"partition": p}` at a call site adds the partition field; a
    request id comes from REQUEST_ID, or from `extra={"request_id": ...}`."""

    def __init__(self, node_id: int | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "time": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node_id,
            "event": record.getMessage(),
        }
        partition = getattr(record, "partition", None)
        if partition is not None:
            out["partition"] = partition
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            out["request_id"] = str(request_id)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a stray non-JSON value in an extra field must not lose the line.
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(log_format: str, level: str | int = "INFO", node_id: int | None = None) -> None:
    """(Re)configure the root logger's single stderr handler.

    Called once with the command-line options before the config is read (so
    config errors are logged at all) and again once the node id and the
    config's [log] format are known."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    formatter: logging.Formatter = (
        JsonFormatter(node_id) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    # Python warnings print to stderr on their own; with JSON logs they become records too.
    logging.captureWarnings(log_format == "json")
