"""Keeping secrets out of everything the gateway prints.

Secrets enter through the config: MQTT/OPC UA passwords, the InfluxDB and pool tokens, the
`secrets:` section — each a pydantic `SecretStr` (its repr, `str()` and JSON dump are
`**********`; code that needs the value calls `.get_secret_value()` at the point of use).
They may be written inline or, better, as `${env:NAME}` / `${file:/path}` references resolved
at load time (`gateway.configload`; a missing variable or unreadable file is a config error
naming the field, never the value).

Three nets catch a value that escapes anyway:

* the log filter (`gateway.logs.SecretMasker`) replaces every configured secret value and any
  API bearer token (`mr_<id>_<secret>`, `Bearer ...`) with `***` in messages, fields and
  tracebacks;
* `install_crash_redaction()` does the same for an uncaught exception's traceback (main
  thread and other threads), which Python would otherwise print raw;
* `exposed_config_warning()` names a config file that group or others can read.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from gateway.logs import MASKER


def config_secret_values(node: Any) -> Iterator[str]:
    """Every SecretStr/SecretBytes value in a validated config (inline ones included, which
    the reference resolver never sees)."""
    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, SecretBytes):
        yield node.get_secret_value().decode("utf-8", "replace")
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from config_secret_values(getattr(node, name))
    elif isinstance(node, dict):
        for value in node.values():
            yield from config_secret_values(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from config_secret_values(value)


def exposed_config_warning(path: str | Path | None) -> str | None:
    """A warning when the config file is readable by group or others (it may hold inline
    secrets, and it says where the secret files are), else None."""
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"config file {path} is readable by group/others (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 it, and keep secrets in ${{env:..}} or ${{file:..}} references"
        )
    return None


def redact(text: str) -> str:
    return MASKER.mask(text)


def _print_masked(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    print(redact(text), file=sys.stderr, end="")


def install_crash_redaction() -> None:
    """Route uncaught exceptions (main thread and others) through the masker."""
    sys.excepthook = _print_masked

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        print(f"Exception in thread {getattr(args.thread, 'name', '?')}:", file=sys.stderr)
        _print_masked(args.exc_type, args.exc_value, args.exc_traceback)

    threading.excepthook = thread_hook


def print_crash(exc: BaseException) -> None:
    """The CLI's output for an unexpected exception: the traceback, masked."""
    _print_masked(type(exc), exc, exc.__traceback__)
