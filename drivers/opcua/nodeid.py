"""Node ids and browse paths as text: parsing and formatting, nothing else (no asyncua, no I/O).

A point says where its value lives in one of two ways:

Node id (OPC UA Part 6 §5.3.1.10 text form)::

    i=2258                                  namespace 0 (the OPC UA namespace)
    ns=2;s=Mill1.SpindleSpeed               namespace by index
    ns=2;i=1001   ns=2;g=<guid>   ns=2;b=<base64>
    nsu=urn:millrace:sim:machine-line;s=Mill1.SpindleSpeed    namespace by URI
    nsu=ml;s=Mill1.SpindleSpeed             ...or by a profile alias (`namespaces: {ml: urn:...}`)

A `;` or `%` inside a URI is written `%3B` / `%25`. A string identifier (`s=`) runs to the end of
the text, so it may contain anything, `;` included. `srv=` (a remote server) is refused.

Browse path, from the Root folder, one browse name per element, separated by `/`::

    0:Objects/2:MachineLine/2:Mill1/2:SpindleSpeed                      namespace by index
    Objects/nsu=urn:millrace:sim:machine-line;MachineLine/ml:Mill1/...  by URI, or by alias
    Objects/...                                                           no prefix: namespace 0

`&` escapes the next character in a name (`a&/b` is the one name `a/b`, `x&:y` is `x:y`). A URI
after `nsu=` runs to the next `;` and may contain `/` and `:`.

Why URIs: a server numbers its namespaces when it starts, and the order can change when it
restarts or its configuration changes. Indexes written in a config are therefore only trusted for
namespace 0; the driver resolves URIs (and aliases) to indexes from the server's NamespaceArray at
every connect (`namespace_index`). Every error is a ValueError (LookupError when resolving)
with a message that quotes the offending text.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias
from urllib.parse import quote, unquote

#: A namespace as written in config: an index, or a URI / profile alias (resolved at connect).
Namespace: TypeAlias = int | str
IdKind: TypeAlias = Literal["i", "s", "g", "b"]

OPC_UA_NAMESPACE = "http://opcfoundation.org/UA/"
MAX_NAMESPACE_INDEX = 65535
MAX_NUMERIC_ID = 2**32 - 1
MAX_STRING_ID = 4096
#: The OPC UA Root folder, where browse paths start.
ROOT_FOLDER_ID = 84

__all__ = [
    "MAX_NAMESPACE_INDEX",
    "OPC_UA_NAMESPACE",
    "ROOT_FOLDER_ID",
    "BrowsePath",
    "IdKind",
    "Namespace",
    "NodeRef",
    "PathElement",
    "format_node_id",
    "is_uri",
    "namespace_index",
    "parse_browse_path",
    "parse_node_id",
]


def is_uri(namespace: str) -> bool:
    """A namespace text with a `:` is a URI; without one it can only be a profile alias
    (aliases are names, and every URI scheme is followed by `:`)."""
    return ":" in namespace


def _quote_uri(uri: str) -> str:
    return quote(uri, safe="/:@!$&'()*+,=-._~?#[]")


def _check_namespace_index(value: int, context: str) -> int:
    if not 0 <= value <= MAX_NAMESPACE_INDEX:
        raise ValueError(f"{context}: namespace index {value} is outside 0..{MAX_NAMESPACE_INDEX}")
    return value


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node id. `namespace` is an index or a URI / alias still to be resolved."""

    namespace: Namespace
    kind: IdKind
    identifier: int | str | uuid.UUID | bytes

    def to_string(self) -> str:
        return format_node_id(self.namespace, self.kind, self.identifier)

    def __str__(self) -> str:
        return self.to_string()

    @property
    def needs_resolution(self) -> bool:
        """True when the namespace is a URI or alias, looked up at every connect."""
        return isinstance(self.namespace, str)


def format_node_id(
    namespace: Namespace, kind: IdKind, identifier: int | str | uuid.UUID | bytes
) -> str:
    """The canonical text of a node id; `parse_node_id(format_node_id(...))` gives it back."""
    if isinstance(namespace, int):
        prefix = "" if namespace == 0 else f"ns={namespace};"
    else:
        prefix = f"nsu={_quote_uri(namespace)};"
    if kind == "i":
        ident = str(int(identifier))  # type: ignore[arg-type]
    elif kind == "s":
        ident = str(identifier)
    elif kind == "g":
        ident = str(identifier if isinstance(identifier, uuid.UUID) else uuid.UUID(str(identifier)))
    elif kind == "b":
        if not isinstance(identifier, bytes):
            raise ValueError("a b= identifier must be bytes")
        ident = base64.b64encode(identifier).decode("ascii")
    else:
        raise ValueError(f"unknown identifier type {kind!r}")
    return f"{prefix}{kind}={ident}"


def parse_node_id(text: str) -> NodeRef:
    """Parse `i=..`, `ns=N;s=..`, `nsu=URI;g=..`, `ns=N;b=..` into a `NodeRef`."""
    if not isinstance(text, str):
        raise ValueError(f"a node id is text like 'ns=2;s=Name' (got {text!r})")
    source = text
    rest = text.strip()
    if not rest:
        raise ValueError("empty node id (write e.g. 'ns=2;s=Mill1.SpindleSpeed' or 'i=2258')")
    namespace: Namespace = 0
    if rest.startswith("srv="):
        raise ValueError(f"node id {source!r}: srv= (a node on another server) is not supported")
    if rest.startswith("ns="):
        head, sep, rest = rest[3:].partition(";")
        if not sep:
            raise ValueError(f"node id {source!r}: missing ';' and identifier after ns=")
        try:
            namespace = _check_namespace_index(int(head.strip()), f"node id {source!r}")
        except ValueError as exc:
            if "outside" in str(exc):
                raise
            raise ValueError(f"node id {source!r}: ns= needs a number (got {head!r})") from None
    elif rest.startswith("nsu="):
        head, sep, rest = rest[4:].partition(";")
        if not sep:
            raise ValueError(f"node id {source!r}: missing ';' and identifier after nsu=")
        uri = unquote(head)
        if not uri:
            raise ValueError(f"node id {source!r}: nsu= needs a namespace URI or alias")
        namespace = uri
    if rest.startswith(("ns=", "nsu=")):
        raise ValueError(f"node id {source!r}: namespace given twice")
    kind, sep, value = rest.partition("=")
    kind = kind.strip()
    if not sep or kind not in ("i", "s", "g", "b"):
        raise ValueError(
            f"node id {source!r}: expected i=, s=, g= or b= after the namespace "
            f"(e.g. 'ns=2;s=Name', 'ns=2;i=1001')"
        )
    if kind == "i":
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"node id {source!r}: i= needs a number (got {value!r})") from None
        if not 0 <= number <= MAX_NUMERIC_ID:
            raise ValueError(f"node id {source!r}: i={number} is outside 0..{MAX_NUMERIC_ID}")
        return NodeRef(namespace, "i", number)
    if kind == "s":
        if not value:
            raise ValueError(f"node id {source!r}: s= needs a non-empty string")
        if len(value) > MAX_STRING_ID:
            raise ValueError(f"node id {source[:40]!r}...: s= is longer than {MAX_STRING_ID}")
        return NodeRef(namespace, "s", value)
    if kind == "g":
        try:
            guid = uuid.UUID(value.strip())
        except ValueError:
            raise ValueError(
                f"node id {source!r}: g= needs a GUID like 09087e75-8e5e-499b-954f-f2a9603db28a"
            ) from None
        return NodeRef(namespace, "g", guid)
    try:
        raw = base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"node id {source!r}: b= needs base64 text (got {value!r})") from None
    if not raw:
        raise ValueError(f"node id {source!r}: b= needs a non-empty byte string")
    return NodeRef(namespace, "b", raw)


@dataclass(frozen=True, slots=True)
class PathElement:
    """One browse name on a path: its namespace (index, URI or alias) and the name."""

    namespace: Namespace
    name: str

    def to_string(self) -> str:
        name = _escape(self.name)
        if isinstance(self.namespace, int):
            return f"{self.namespace}:{name}"
        if is_uri(self.namespace):
            return f"nsu={self.namespace.replace('%', '%25').replace(';', '%3B')};{name}"
        return f"{self.namespace}:{name}"


@dataclass(frozen=True, slots=True)
class BrowsePath:
    """Browse names from the Root folder down to a node."""

    elements: tuple[PathElement, ...]

    def to_string(self) -> str:
        return "/".join(e.to_string() for e in self.elements)

    def __str__(self) -> str:
        return self.to_string()

    @property
    def namespaces(self) -> set[Namespace]:
        return {e.namespace for e in self.elements}


def _escape(name: str) -> str:
    return "".join("&" + c if c in "/:;&" else c for c in name)


def parse_browse_path(text: str) -> BrowsePath:
    """Parse `0:Objects/2:Line/nsu=urn:x;Mill1/ml:Speed` into a `BrowsePath`."""
    if not isinstance(text, str):
        raise ValueError(f"a browse path is text like '0:Objects/2:Line/2:Speed' (got {text!r})")
    source = text
    s = text.strip()
    if s.startswith("/"):
        s = s[1:]
    if not s:
        raise ValueError("empty browse path (write e.g. '0:Objects/2:MachineLine/2:Mill1')")
    elements: list[PathElement] = []
    i, n = 0, len(s)
    while True:
        namespace: Namespace = 0
        if s.startswith("nsu=", i):
            end = s.find(";", i + 4)
            if end < 0:
                raise ValueError(
                    f"browse path {source!r}: element {len(elements) + 1} has nsu= "
                    "without ';' before the name (write nsu=URI;Name)"
                )
            uri = unquote(s[i + 4 : end])
            if not uri:
                raise ValueError(
                    f"browse path {source!r}: empty nsu= in element {len(elements) + 1}"
                )
            namespace = uri
            i = end + 1
        # Read the name up to an unescaped '/', noting an unescaped ':' (namespace prefix).
        chars: list[str] = []
        prefix: str | None = None
        while i < n:
            c = s[i]
            if c == "&":
                if i + 1 >= n:
                    raise ValueError(f"browse path {source!r}: '&' at the end escapes nothing")
                chars.append(s[i + 1])
                i += 2
                continue
            if c == "/":
                break
            if c == ":" and prefix is None and isinstance(namespace, int) and namespace == 0:
                prefix = "".join(chars)
                chars = []
                i += 1
                continue
            chars.append(c)
            i += 1
        name = "".join(chars)
        if prefix is not None:
            prefix = prefix.strip()
            if not prefix:
                raise ValueError(f"browse path {source!r}: empty namespace before ':{name}'")
            # digits: an index; anything else: a profile alias
            namespace = (
                _check_namespace_index(int(prefix), f"browse path {source!r}")
                if prefix.isdigit()
                else prefix
            )
        if not name:
            raise ValueError(
                f"browse path {source!r}: element {len(elements) + 1} has no browse name"
            )
        elements.append(PathElement(namespace, name))
        if i >= n:
            break
        i += 1  # skip '/'
        if i >= n:
            raise ValueError(f"browse path {source!r} ends with '/'")
    return BrowsePath(tuple(elements))


def namespace_index(
    namespace: Namespace,
    namespace_array: Sequence[str],
    aliases: Mapping[str, str] | None = None,
) -> int:
    """The server's index for a namespace written as an index, URI or alias.

    `namespace_array` is the server's Server.NamespaceArray, read at this connect. Raises
    LookupError (with the URI in the message) when the server does not have the namespace.
    """
    if isinstance(namespace, int):
        if namespace >= len(namespace_array) and namespace != 0:
            raise LookupError(
                f"namespace index {namespace} is not on the server "
                f"(it has {len(namespace_array)} namespaces)"
            )
        return namespace
    uri = (aliases or {}).get(namespace, namespace)
    if not is_uri(uri):
        raise LookupError(f"namespace alias {namespace!r} is not defined in the profile")
    try:
        return list(namespace_array).index(uri)
    except ValueError:
        raise LookupError(f"namespace {uri!r} is not on the server") from None
