"""Structured logs: one JSON object (or one key=value line) per event, secrets masked.

Fields passed with `extra={...}` become top-level keys. Every value read from a secret
reference in the config is registered with `SecretMasker` and replaced by `***` wherever it
would appear: message, fields or traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

# color_message: uvicorn's ANSI-coloured copy of the message, noise in a structured log.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


#: API bearer tokens (gateway.auth.tokens) and whatever follows "Bearer " in a header dump.
_TOKEN_RE = re.compile(r"mr_[0-9a-f]{6,32}_[A-Za-z0-9_\-]{8,}|(?<=Bearer )[A-Za-z0-9._~+/=\-]{8,}")


class SecretMasker(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Longest first so a secret containing another is masked whole.
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 3}
        self._secrets = sorted(merged, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        if "mr_" in text or "Bearer " in text:
            text = _TOKEN_RE.sub("***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = self.mask(value)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


MASKER = SecretMasker()


def setup_logging(level: str = "info", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for the process (idempotent)."""
    MASKER.add(secrets)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_millrace", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._millrace = True  # type: ignore[attr-defined]
    handler.addFilter(MASKER)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pymodbus logs every failed request at ERROR; the driver logs transitions instead.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # asyncua narrates every node it adds and every session at INFO.
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
