"""`millrace equipment add|list|show|update|retire`: the technician's registry commands.

The registry lives beside the store (`<store folder>/equipment.db`). Machines declared in the
config are seeded at every command, so the list is what the running gateway will use; fields
the config declares win at the next start (`update` warns when it touches one). Every change
is recorded with who made it (`cli:<user>`). Machine files are YAML or JSON in the shape of
`gateway.equipment.model.Machine` (see gateway/equipment/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.configload import LoadedConfig, load_config
from gateway.equipment.errors import EquipmentError, InvalidMachine
from gateway.equipment.model import from_config_equipment, parse_machine
from gateway.equipment.problems import Problem
from gateway.equipment.registry import EquipmentRegistry, Record

EXIT_OK, EXIT_FAILURES, EXIT_INVALID = 0, 1, 2


def add_parser(sub: Any) -> None:
    eq = sub.add_parser("equipment", help="register, update and retire shared machinery")
    esub = eq.add_subparsers(title="equipment commands", metavar="WHAT")

    def cmd(name: str, helptext: str) -> argparse.ArgumentParser:
        p = esub.add_parser(name, help=helptext)
        p.add_argument("-c", "--config", required=True, help="gateway YAML file")
        p.set_defaults(func=run)
        p.set_defaults(action=name)
        return p

    ls = cmd("list", "machines in the registry, one line each")
    ls.add_argument("--all", action="store_true", help="include retired machines")
    ls.add_argument("--json", action="store_true")
    show = cmd("show", "one machine in full, with its change history")
    show.add_argument("id")
    add = cmd("add", "register a machine from a YAML or JSON file")
    add.add_argument("file", help="machine file (- for standard input)")
    upd = cmd("update", "change a machine: a partial YAML/JSON document merged into it")
    upd.add_argument("id")
    upd.add_argument("file", help="the changes (- for standard input)")
    upd.add_argument("--version", type=int, required=True, help="the version you changed")
    ret = cmd("retire", "take a machine out of sharing (kept, with its history)")
    ret.add_argument("id")
    ret.add_argument("--version", type=int, required=True, help="the version you retire")


def registry_path(loaded: LoadedConfig) -> Path:
    return loaded.store_path().parent / "equipment.db"


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    try:
        return asyncio.run(_run(args, loaded))
    except InvalidMachine as exc:
        print(f"millrace: invalid machine ({len(exc.problems)} problems):", file=sys.stderr)
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    except EquipmentError as exc:
        print(f"millrace: {exc}", file=sys.stderr)
        return EXIT_FAILURES


async def _run(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    who = f"cli:{getpass.getuser()}"
    path = registry_path(loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    async with EquipmentRegistry(path) as reg:
        report = await reg.seed([from_config_equipment(e) for e in loaded.config.equipment])
        for mid, problems in report.invalid.items():
            print(
                f"warning: config entry {mid} not applied: {'; '.join(problems)}", file=sys.stderr
            )
        action = args.action
        if action == "list":
            records = await reg.list(include_retired=args.all)
            if args.json:
                print(json.dumps([_doc(r) for r in records], indent=2, default=str))
            else:
                for r in records:
                    print(_line(r))
                print(f"{len(records)} machine(s) in {path}")
        elif action == "show":
            rec = await reg.get(args.id)
            changes = await reg.changes(args.id)
            doc = _doc(rec) | {
                "history": [
                    {"version": c.version, "action": c.action, "who": c.who, "at": c.at,
                     "fields": list(c.fields)}
                    for c in changes
                ]
            }  # fmt: skip
            print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        elif action == "add":
            rec = await reg.add(parse_machine(_read(args.file)), who=who)
            print(f"added {rec.machine.id} (version {rec.version})")
        elif action == "update":
            patch = _read(args.file)
            current = await reg.get(args.id)
            touched = [f for f in current.config_fields if _touches(patch, f)]
            rec = await reg.update(args.id, patch, version=args.version, who=who)
            print(f"updated {rec.machine.id} (version {rec.version})")
            if touched:
                print(
                    f"warning: the config declares {', '.join(touched)}; it wins at the next "
                    "start: change the config file too",
                    file=sys.stderr,
                )
        elif action == "retire":
            rec = await reg.retire(args.id, version=args.version, who=who)
            print(f"retired {rec.machine.id} (version {rec.version})")
    return EXIT_OK


def _read(file: str) -> dict[str, Any]:
    text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidMachine(
            [Problem("(file)", "file_not_document", f"not valid YAML or JSON ({exc})")]
        ) from exc
    if not isinstance(doc, dict):
        kind = type(doc).__name__
        raise InvalidMachine(
            [Problem("(file)", "file_not_mapping", "a machine is a mapping", kind, {"kind": kind})]
        )
    return doc


def _touches(patch: dict[str, Any], dotted: str) -> bool:
    node: Any = patch
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _doc(r: Record) -> dict[str, Any]:
    return {
        "machine": r.machine.model_dump(mode="json", exclude_none=True),
        "version": r.version,
        "source": r.source,
        "retired": r.retired,
        "config_fields": list(r.config_fields),
    }


def _line(r: Record) -> str:
    m = r.machine
    shared = "shared" if m.sharing.shared else "not shared"
    state = "RETIRED" if r.retired else shared
    return f"{m.id:<20} {m.type:<22} v{r.version:<4} {r.source:<7} {state}"
