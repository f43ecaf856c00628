"""Structured logs never carry a secret: message, fields or traceback."""

from __future__ import annotations

import io
import json
import logging

from gateway.logs import JsonFormatter, SecretMasker, TextFormatter


def capture(fmt: logging.Formatter, masker: SecretMasker) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(masker)
    handler.setFormatter(fmt)
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_lines_with_fields_and_secrets_masked() -> None:
    logger, stream = capture(JsonFormatter(), SecretMasker(["hunter2-password"]))
    logger.info(
        "login with %s",
        "hunter2-password",
        extra={"device": "pump-1", "auth": "x hunter2-password"},
    )
    try:
        raise ValueError("bad credentials hunter2-password")
    except ValueError:
        logger.exception("failed", extra={"device": "pump-1"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert lines[0]["msg"] == "login with ***"
    assert lines[0]["device"] == "pump-1" and lines[0]["auth"] == "x ***"
    assert lines[0]["level"] == "info" and "ts" in lines[0]
    assert "ValueError: bad credentials ***" in lines[1]["exc"]
    assert "hunter2-password" not in stream.getvalue()


def test_text_format_is_one_line_with_fields() -> None:
    logger, stream = capture(TextFormatter(), SecretMasker())
    logger.warning("device down", extra={"device": "press-1", "error": "timeout"})
    (line,) = stream.getvalue().splitlines()
    assert "warning" in line and "device down" in line and "device=press-1 error=timeout" in line
