"""Equipment: the machines this box shares with the central matching pool.

Pure modules (no I/O): `model` (what a machine is, data classes), `status` (status from
live points), `health` (from the models' results), `availability` (policy ∩ status ∩ health −
bookings), `disclose` (what leaves the box, by data class), `metering` (usage per booking and
its hash chain). Two small SQLite files: `registry.EquipmentRegistry` and
`metering.MeteringLog`. See README.md in this folder for the defaults and the wiring.
"""

from gateway.equipment.availability import Availability, Level, availability, policy_windows
from gateway.equipment.disclose import owner_ref, public_view, restricted_view
from gateway.equipment.errors import (
    DuplicateMachine,
    EquipmentError,
    InvalidMachine,
    MachineRetired,
    UnknownMachine,
    VersionConflict,
)
from gateway.equipment.health import HealthView, health_from_engine, health_from_values
from gateway.equipment.metering import MeteringLog, meter_usage, meters_of, verify_chain
from gateway.equipment.model import (
    Machine,
    MachineType,
    Quantity,
    Status,
    from_config_equipment,
    parse_machine,
)
from gateway.equipment.registry import EquipmentRegistry, Record
from gateway.equipment.status import compile_status_rules, derive_status, machine_values

__all__ = [
    "Availability",
    "DuplicateMachine",
    "EquipmentError",
    "EquipmentRegistry",
    "HealthView",
    "InvalidMachine",
    "Level",
    "Machine",
    "MachineRetired",
    "MachineType",
    "MeteringLog",
    "Quantity",
    "Record",
    "Status",
    "UnknownMachine",
    "VersionConflict",
    "availability",
    "compile_status_rules",
    "derive_status",
    "from_config_equipment",
    "health_from_engine",
    "health_from_values",
    "machine_values",
    "meter_usage",
    "meters_of",
    "owner_ref",
    "parse_machine",
    "policy_windows",
    "public_view",
    "restricted_view",
    "verify_chain",
]
