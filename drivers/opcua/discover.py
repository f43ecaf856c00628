"""Browse an OPC UA server and write a starting profile (`millrace discover opcua`).

`discover_opcua(url)` walks the address space from the Objects folder along hierarchical
references (Organizes, HasComponent, ...), breadth first and in batched Browse calls, down to
`depth` levels, visiting at most `max_nodes` nodes. Namespace 0 (the server's own Server object
and diagnostics) is skipped. Every readable Variable becomes a point:

* `node` in `nsu=<namespace URI>;...` form, so the profile survives a server that renumbers its
  namespaces (namespace 0 nodes keep the plain `i=...` form);
* `name` from the browse path below Objects in snake_case, the prefix that all points share
  dropped (`MachineLine/Mill1/SpindleSpeed` -> `mill1_spindle_speed`), made unique;
* `writable` from the UserAccessLevel CurrentWrite bit;
* `unit` from the EngineeringUnits property, `min`/`max` from the EURange property, and the
  node's Description, when present (properties are not points themselves).

`include` / `exclude` are shell globs (case-sensitive) matched against a node's browse name and
against its slash-separated browse path below Objects or any tail of it (`Mill*/Spindle*` matches
`MachineLine/Mill1/SpindleSpeed`). `exclude` prunes
whole subtrees; `include` selects variables. The result is plain data: it validates as
`OpcuaProfile`, and `profile_yaml()` writes it in the style of `drivers/profiles/*.yaml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from asyncua import ua
from pydantic import SecretStr

from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import connect_client, describe_error, make_client
from drivers.opcua.nodeid import format_node_id
from gateway.errors import TransportError

__all__ = ["discover_opcua", "point_name", "profile_yaml"]

_OBJECTS = ua.NodeId(ua.ObjectIds.ObjectsFolder)
_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_CHUNK = 500
_NAME_MAX = 64


@dataclass(slots=True)
class _Found:
    node: ua.NodeId
    path: tuple[str, ...]
    props: dict[str, ua.NodeId] = field(default_factory=dict)


def _snake(segment: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", segment)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", s)
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", s).lower()
    return re.sub(r"_+", "_", s).strip("_-")


def point_name(path: Sequence[str]) -> str:
    """A valid point name (`[A-Za-z0-9][A-Za-z0-9_-]{0,63}`) for a browse path."""
    name = "_".join(p for p in (_snake(seg) for seg in path) if p) or "point"
    if not name[0].isalnum():
        name = "p" + name
    if len(name) > _NAME_MAX:
        digest = hashlib.sha1("/".join(path).encode()).hexdigest()[:6]
        name = f"{name[: _NAME_MAX - 7].rstrip('_-')}_{digest}"
    return name


def _matches(patterns: Sequence[str], path: tuple[str, ...]) -> bool:
    """A glob matches the browse name, or the path below Objects, or any tail of that path
    (`Mill1/Spindle*` matches `MachineLine/Mill1/SpindleSpeed`)."""
    tails = ["/".join(path[i:]) for i in range(len(path))]
    return any(fnmatch.fnmatchcase(tail, p) for p in patterns for tail in tails)


def _node_text(node: ua.NodeId, namespaces: list[str]) -> str:
    kind = {
        ua.NodeIdType.TwoByte: "i",
        ua.NodeIdType.FourByte: "i",
        ua.NodeIdType.Numeric: "i",
        ua.NodeIdType.String: "s",
        ua.NodeIdType.Guid: "g",
        ua.NodeIdType.ByteString: "b",
    }[node.NodeIdType]
    idx = node.NamespaceIndex
    namespace: int | str = idx if idx == 0 or idx >= len(namespaces) else namespaces[idx]
    return format_node_id(namespace, kind, node.Identifier)  # type: ignore[arg-type]


async def discover_opcua(
    url: str,
    *,
    depth: int = 5,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    max_nodes: int = 2000,
    name: str = "discovered",
    security_policy: str = "None",
    security_mode: str = "None",
    certificate: str | None = None,
    private_key: str | None = None,
    server_certificate: str | None = None,
    application_uri: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Browse `url` from Objects and return a starting profile (plain data; see module doc).

    Security arguments are those of an `opcua` device (validated the same way). Raises
    ValueError for bad arguments or when nothing readable was found, `SetupError` for what
    retrying will not fix (certificate files, ApplicationUri, refused identity), and
    TransportError when the server cannot be reached or fails a request: all but the first
    are `MillraceError`s, so a CLI catches `(MillraceError, ValueError)`."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1 (got {depth})")
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be at least 1 (got {max_nodes})")
    device: dict[str, Any] = {
        "id": "discover",
        "protocol": "opcua",
        "endpoint": url,
        "profile": "discovered",
        "security_policy": security_policy,
        "security_mode": security_mode,
        "certificate": certificate,
        "private_key": private_key,
        "server_certificate": server_certificate,
        "username": username,
        "password": SecretStr(password) if password is not None else None,
        "timeout": timeout,
    }
    if application_uri:
        device["application_uri"] = application_uri
    cfg = OpcuaDevice.model_validate(device)
    client = make_client(cfg)
    try:
        await connect_client(cfg, client)
        namespaces = [str(u) for u in await client.get_namespace_array()]
        found, visited, truncated = await _browse(client, depth, exclude or (), max_nodes)
        points = await _describe_points(client, found, namespaces, include or ())
    except (OSError, TimeoutError, ua.UaError) as exc:  # one error type for the CLI to catch
        raise TransportError(f"{url}: {describe_error(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await client.disconnect()
        client.disconnect_socket()
    if not points:
        raise ValueError(
            f"no readable variables under Objects of {url} (depth {depth}"
            + (f", include {list(include)}" if include else "")
            + (f", exclude {list(exclude)}" if exclude else "")
            + ")"
        )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    note = f"; stopped after {visited} nodes (max_nodes)" if truncated else ""
    return {
        "name": point_name([name]),
        "protocol": "opcua",
        "description": f"Discovered from {url} on {when}: {len(points)} variables{note}",
        "points": points,
    }


async def _browse(
    client: Any, depth: int, exclude: Sequence[str], max_nodes: int
) -> tuple[list[_Found], int, bool]:
    """Breadth-first walk; returns variables (with their EU properties), nodes visited, and
    whether max_nodes stopped the walk."""
    session = client.uaclient.session
    level: list[tuple[ua.NodeId, tuple[str, ...], _Found | None]] = [(_OBJECTS, (), None)]
    seen = {_OBJECTS}
    variables: list[_Found] = []
    visited = 0
    for current_depth in range(1, depth + 2):  # +1: the properties of the deepest variables
        nxt: list[tuple[ua.NodeId, tuple[str, ...], _Found | None]] = []
        for start in range(0, len(level), _CHUNK):
            part = level[start : start + _CHUNK]
            results = await _browse_many(session, [node for node, _, _ in part])
            for (_node, path, owner), refs in zip(part, results, strict=True):
                for ref in refs:
                    target = ref.NodeId
                    if getattr(target, "ServerIndex", 0) or target.NamespaceIndex == 0:
                        continue
                    child = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                    bname = ref.BrowseName.Name or ""
                    if ref.ReferenceTypeId == _HAS_PROPERTY:
                        if owner is not None and bname in ("EngineeringUnits", "EURange"):
                            owner.props[bname] = child
                        continue
                    if child in seen or current_depth > depth:
                        continue
                    seen.add(child)
                    child_path = (*path, bname)
                    if exclude and _matches(exclude, child_path):
                        continue
                    if visited >= max_nodes:
                        return variables, visited, True
                    visited += 1
                    found: _Found | None = None
                    if ref.NodeClass == ua.NodeClass.Variable:
                        found = _Found(child, child_path)
                        variables.append(found)
                    nxt.append((child, child_path, found))
        level = nxt
        if not level:
            break
    return variables, visited, False


async def _browse_many(session: Any, nodes: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    params = ua.BrowseParameters()
    params.RequestedMaxReferencesPerNode = 0
    params.NodesToBrowse = [
        ua.BrowseDescription(
            NodeId=node,
            BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
            IncludeSubtypes=True,
            NodeClassMask=ua.NodeClass.Object | ua.NodeClass.Variable,
            ResultMask=ua.BrowseResultMask.All,
        )
        for node in nodes
    ]
    results = await session.browse(params)
    out: list[list[ua.ReferenceDescription]] = []
    for result in results:
        refs = list(result.References or [])
        cp = result.ContinuationPoint
        while cp:
            nxt = ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=[cp])
            more = (await session.browse_next(nxt))[0]
            refs += list(more.References or [])
            cp = more.ContinuationPoint
        out.append(refs)
    return out


async def _read(session: Any, items: list[tuple[ua.NodeId, ua.AttributeIds]]) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for start in range(0, len(items), _CHUNK):
        params = ua.ReadParameters(
            NodesToRead=[
                ua.ReadValueId(NodeId=n, AttributeId=a) for n, a in items[start : start + _CHUNK]
            ]
        )
        out += await session.read(params)
    return out


def _value(dv: ua.DataValue) -> Any:
    if not dv.StatusCode.is_good() or dv.Value is None:
        return None
    return dv.Value.Value


async def _describe_points(
    client: Any, found: list[_Found], namespaces: list[str], include: Sequence[str]
) -> list[dict[str, Any]]:
    session = client.uaclient.session
    chosen = [f for f in found if not include or _matches(include, f.path)]
    attrs = (ua.AttributeIds.UserAccessLevel, ua.AttributeIds.Description)
    dvs = await _read(session, [(f.node, a) for f in chosen for a in attrs])
    props = [(f, key) for f in chosen for key in ("EngineeringUnits", "EURange") if key in f.props]
    prop_dvs = await _read(session, [(f.props[key], ua.AttributeIds.Value) for f, key in props])
    extra: dict[tuple[int, str], Any] = {
        (id(f), key): _value(dv) for (f, key), dv in zip(props, prop_dvs, strict=True)
    }
    if len(chosen) > 1:  # drop the path prefix every point shares (e.g. MachineLine/)
        common = 0
        shortest = min(len(f.path) for f in chosen)
        while common < shortest - 1 and len({f.path[common] for f in chosen}) == 1:
            common += 1
    else:
        common = max(0, len(chosen[0].path) - 2) if chosen else 0
    points: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, f in enumerate(chosen):
        access, description = _value(dvs[2 * i]), _value(dvs[2 * i + 1])
        level = int(access) if isinstance(access, int) else 0
        if not level & ua.AccessLevel.CurrentRead.mask:
            continue
        name = base = point_name(f.path[common:])
        n = 2
        while name in names:
            suffix = f"_{n}"
            name = base[: _NAME_MAX - len(suffix)] + suffix
            n += 1
        names.add(name)
        point: dict[str, Any] = {"name": name, "node": _node_text(f.node, namespaces)}
        eu = extra.get((id(f), "EngineeringUnits"))
        unit = getattr(getattr(eu, "DisplayName", None), "Text", None)
        if unit:
            point["unit"] = unit
        if level & ua.AccessLevel.CurrentWrite.mask:
            point["writable"] = True
        rng = extra.get((id(f), "EURange"))
        low, high = getattr(rng, "Low", None), getattr(rng, "High", None)
        if isinstance(low, int | float) and isinstance(high, int | float) and low <= high:
            point["min"], point["max"] = float(low), float(high)
        text = getattr(description, "Text", None)
        if text and text != f.path[-1]:
            point["description"] = text
        points.append(point)
    return points


def profile_yaml(profile: dict[str, Any]) -> str:
    """The profile as YAML in the style of the built-in profiles (one point per line)."""
    head = {k: v for k, v in profile.items() if k != "points"}
    lines = [
        "# Generated by `millrace discover opcua`: a starting point. Review the names, drop what",
        "# you do not need, and set deadbands / poll mode where they help.",
        yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=100).rstrip(),
        "points:",
    ]
    for point in profile.get("points", []):
        flow = yaml.safe_dump(
            point, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10_000
        ).strip()
        lines.append(f"  - {flow}")
    return "\n".join(lines) + "\n"
