"""Errors of the equipment registry and the metering log, under Millrace's one hierarchy.

```
MillraceError                      (gateway.errors)
└── EquipmentError                 anything the registry or the metering log refuses
    ├── InvalidMachine             a machine (or a patch) fails validation; `.problems`, `.details`
    ├── DuplicateMachine           add() with an id the registry already holds (retired too)
    ├── UnknownMachine             get/update/retire of an id the registry does not hold
    ├── MachineRetired             update() of a retired machine
    └── VersionConflict            optimistic update with a stale version; `.current`
```

Messages name the machine (`machine tractor-01: ...`) so the CLI and the API can show them
as they are; the API maps them to 422, 409, 404, 409 and 409.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.equipment.problems import Problem
from gateway.errors import MillraceError


class EquipmentError(MillraceError):
    """The registry or the metering log refused an operation."""


class InvalidMachine(EquipmentError):
    """A machine failed validation. `problems` holds every `path: reason (got VALUE)` line,
    `details` the same problems as data (code and params, for translation)."""

    def __init__(self, problems: Sequence[Problem], *, machine_id: str | None = None) -> None:
        self.details = tuple(problems)
        self.problems = [p.line for p in self.details]
        self.machine_id = machine_id
        head = f"machine {machine_id}: invalid" if machine_id else "invalid machine"
        super().__init__(head + ":\n" + "\n".join(self.problems))


class DuplicateMachine(EquipmentError):
    """add() with an id that is already registered (a retired machine keeps its id)."""


class UnknownMachine(EquipmentError):
    """No machine with this id."""


class MachineRetired(EquipmentError):
    """The machine is retired: it can be read, not changed."""


class VersionConflict(EquipmentError):
    """Someone changed the machine since the caller read it; `current` is its version now."""

    def __init__(self, message: str, *, current: int) -> None:
        super().__init__(message)
        self.current = current
