"""Millrace's one error hierarchy.

```
MillraceError
├── ConfigError            invalid configuration; carries every problem found (`.problems`)
├── TransportError         transient (refused, timeout, reset): retry with backoff
├── DeviceError            the device answered with a protocol exception: BAD quality
├── WriteRejected          refused before anything was sent (not writable, range)
├── StoreError             the local store cannot take or serve data
├── ModelError             a model's manifest or file is unusable, or a call failed
└── SinkError              an uplink could not deliver
    ├── SinkRetry          try again later (connection lost, 5xx)
    ├── SinkThrottle       the far side asked us to slow down; `.retry_after` seconds
    └── SinkDrop           the far side rejected the data as malformed; retrying will not help
```

Errors raised for a device or point carry that context in the message (`device pump-1 point
flow: ...`) and keep the original exception as `__cause__` (`raise ... from exc`).
"""

from __future__ import annotations


class MillraceError(Exception):
    """Base of every error Millrace raises on purpose."""


class ConfigError(MillraceError):
    """Configuration is invalid. `problems` holds every `path: reason (got VALUE)` line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(self.problems))


class TransportError(MillraceError):
    """A transient I/O failure: the caller backs off and retries."""


class DeviceError(MillraceError):
    """The device answered with a protocol-level exception (e.g. Modbus exception code)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class WriteRejected(MillraceError):
    """A write was refused before anything reached the device."""


class StoreError(MillraceError):
    """The local store failed."""


class ModelError(MillraceError):
    """A model cannot be loaded (manifest, checksum, ONNX graph) or a call to it failed."""


class SinkError(MillraceError):
    """An uplink could not deliver a batch."""


class SinkRetry(SinkError):
    """Transient: keep the batch and try again with backoff."""


class SinkThrottle(SinkError):
    """The far side asked for a pause."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkDrop(SinkError):
    """The far side rejected the data itself; the batch must be split or quarantined."""
