"""node.logfmt: JSON log lines have the stable fields, stay on one line, and
the [log] format key is parsed strictly."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import ConfigError, parse_config
from node.logfmt import REQUEST_ID, JsonFormatter, configure

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def _outside_any_call() -> Iterator[None]:
    """Another test in this process may have served a call synchronously in
    the main context (pytest runs them all in one); these start outside one."""
    token = REQUEST_ID.set("")
    yield
    REQUEST_ID.reset(token)


def _record(msg: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    return logging.getLogger("medkv.test").makeRecord(
        "medkv.test", logging.WARNING, __file__, 1, msg, args, exc_info,  # type: ignore[arg-type]
        extra=extra or None,
    )


def test_fields_are_stable_and_the_line_is_json() -> None:
    line = JsonFormatter(node_id=3).format(_record("partition %d: caught up", 7, partition=7))
    out = json.loads(line)
    assert set(out) == {"time", "level", "logger", "node", "event", "partition"}
    assert RFC3339_UTC.match(out["time"]), out["time"]
    assert out["level"] == "WARNING" and out["logger"] == "medkv.test"
    assert out["node"] == 3 and out["partition"] == 7
    assert out["event"] == "partition 7: caught up"


def test_no_partition_or_request_id_when_unknown() -> None:
    out = json.loads(JsonFormatter(node_id=1).format(_record("started")))
    assert "partition" not in out and "request_id" not in out and "exc_info" not in out


def test_request_id_comes_from_the_context_of_the_call() -> None:
    token = REQUEST_ID.set("ab12-9")
    try:
        out = json.loads(JsonFormatter(1).format(_record("refused")))
    finally:
        REQUEST_ID.reset(token)
    assert out["request_id"] == "ab12-9"
    out = json.loads(JsonFormatter(1).format(_record("refused", request_id="x-1")))
    assert out["request_id"] == "x-1"


def test_quotes_newlines_and_control_characters_stay_on_one_line() -> None:
    msg = 'a "quoted"\nsecond line\r\tand \x00 and \u00e9'
    line = JsonFormatter(1).format(_record("%s", msg))
    assert "\n" not in line and "\r" not in line
    assert json.loads(line)["event"] == msg


def test_a_traceback_is_one_escaped_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = _record("queued operation failed", exc_info=sys.exc_info())
    line = JsonFormatter(1).format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["event"] == "queued operation failed"
    assert out["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in out["exc_info"] and "\n" in out["exc_info"]


def test_an_extra_value_json_cannot_encode_does_not_lose_the_line() -> None:
    out = json.loads(JsonFormatter(1).format(_record("x", partition=Path("/p"))))
    assert out["partition"] == "/p"


def test_configure_switches_the_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    try:
        configure("json", "INFO", node_id=5)
        logging.getLogger("medkv.host").info("hello", extra={"partition": 2})
        configure("text", "INFO")
        logging.getLogger("medkv.host").info("plain")
        with pytest.raises(ValueError):
            configure("xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = buf.getvalue().splitlines()
    assert json.loads(first)["node"] == 5 and json.loads(first)["partition"] == 2
    assert second.endswith("INFO medkv.host: plain")


BASE = {
    "node_id": 1,
    "listen": "127.0.0.1:7101",
    "data_dir": "d",
    "partitions": 2,
    "replication": 1,
    "peers": [{"id": 1, "address": "127.0.0.1:7101"}],
    "insecure": True,
}


def test_log_format_config_key(tmp_path: Path) -> None:
    assert parse_config(BASE, tmp_path).log.format == "text"
    assert parse_config({**BASE, "log": {"format": "json"}}, tmp_path).log.format == "json"
    with pytest.raises(ConfigError, match=r'\[log\] format must be "text" or "json"'):
        parse_config({**BASE, "log": {"format": "xml"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[log\]: colour"):
        parse_config({**BASE, "log": {"colour": True}}, tmp_path)


def test_a_refusal_about_one_partition_carries_it(caplog: pytest.LogCaptureFixture) -> None:
    from node.errors import ResourceExhausted
    from node.grpc_errors import current_method, log_refusal, to_status

    token = current_method.set("medkv.v1.KV/OpenSession/logfmt-test")  # its own rate-limit key
    try:
        with caplog.at_level(logging.INFO, logger="medkv.rpc"):
            e = ResourceExhausted("partition 3: 8 sessions are open", partition=3)
            log_refusal(e)
            status = to_status(e)
    finally:
        current_method.reset(token)
    (rec,) = [r for r in caplog.records if "logfmt-test" in r.getMessage()]
    out = json.loads(JsonFormatter(2).format(rec))
    assert out["partition"] == 3 and out["event"].startswith("refused medkv.v1.KV/OpenSession")
    assert "exc_info" not in out
    assert status.message == "partition 3: 8 sessions are open"  # the caller sees no new field
