"""Aware UTC datetimes only: the equipment modules refuse naive times rather than guess."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(t: datetime | float, what: str = "time") -> datetime:
    """Aware datetime (or epoch seconds) -> UTC; a naive datetime is refused."""
    if isinstance(t, int | float):
        return datetime.fromtimestamp(t, UTC)
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must carry a time zone (got naive {t.isoformat()})")
    return t.astimezone(UTC)


def iso(t: datetime) -> str:
    """ISO 8601 in UTC to the second: 2024-06-10T08:00:00Z."""
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
