"""Node id and browse path text: every form parses to what it says, formats back to the same
text, and every malformed input fails with a message that quotes it."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.opcua.nodeid import (
    BrowsePath,
    NodeRef,
    PathElement,
    format_node_id,
    namespace_index,
    parse_browse_path,
    parse_node_id,
)

URI = "urn:millrace:sim:machine-line"
GUID = "09087e75-8e5e-499b-954f-f2a9603db28a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("i=2258", NodeRef(0, "i", 2258)),
        ("ns=2;s=Mill1.SpindleSpeed", NodeRef(2, "s", "Mill1.SpindleSpeed")),
        ("ns=2;i=1001", NodeRef(2, "i", 1001)),
        (f"ns=3;g={GUID}", NodeRef(3, "g", uuid.UUID(GUID))),
        ("ns=2;b=cmVjaXBlLWhhc2g=", NodeRef(2, "b", b"recipe-hash")),
        (f"nsu={URI};s=Mill1.State", NodeRef(URI, "s", "Mill1.State")),
        ("nsu=ml;s=Mill1.State", NodeRef("ml", "s", "Mill1.State")),
        ("nsu=http://example.com/UA/%3Bx;i=5", NodeRef("http://example.com/UA/;x", "i", 5)),
        ("ns=2;s=a;b=c", NodeRef(2, "s", "a;b=c")),  # s= runs to the end, ';' included
        ("s=Plain", NodeRef(0, "s", "Plain")),
        ("  ns=2;i=7  ", NodeRef(2, "i", 7)),
    ],
)
def test_node_id_forms(text: str, expected: NodeRef) -> None:
    assert parse_node_id(text) == expected


def test_namespace_kinds() -> None:
    assert not parse_node_id("ns=2;i=1").needs_resolution
    assert parse_node_id(f"nsu={URI};i=1").needs_resolution
    assert parse_node_id("nsu=ml;i=1").needs_resolution


@pytest.mark.parametrize(
    "text",
    [
        "i=2258",
        "ns=2;s=Mill1.SpindleSpeed",
        "ns=2;i=1001",
        f"ns=3;g={GUID}",
        "ns=2;b=cmVjaXBlLWhhc2g=",
        f"nsu={URI};s=Mill1.State",
        "nsu=ml;s=Mill1.State",
    ],
)
def test_canonical_text_round_trips(text: str) -> None:
    assert parse_node_id(text).to_string() == text
    assert str(parse_node_id(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty node id"),
        ("   ", "empty node id"),
        ("ns=2", "missing ';' and identifier after ns="),
        ("ns=x;i=1", "ns= needs a number"),
        ("ns=70000;i=1", "outside 0..65535"),
        ("nsu=;i=1", "nsu= needs a namespace URI"),
        (f"nsu={URI}", "missing ';' and identifier after nsu="),
        ("ns=2;ns=3;i=1", "namespace given twice"),
        ("ns=2;x=1", "expected i=, s=, g= or b="),
        ("Mill1.SpindleSpeed", "expected i=, s=, g= or b="),
        ("ns=2;i=abc", "i= needs a number"),
        ("ns=2;i=-1", "outside 0..4294967295"),
        ("ns=2;i=4294967296", "outside 0..4294967295"),
        ("ns=2;s=", "s= needs a non-empty string"),
        ("ns=2;g=not-a-guid", "g= needs a GUID"),
        ("ns=2;b=***", "b= needs base64"),
        ("ns=2;b=", "b= needs a non-empty byte string"),
        ("srv=1;ns=2;i=1", "srv="),
    ],
)
def test_bad_node_ids_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="node id") as info:
        parse_node_id(text)
    assert message in str(info.value)


def test_non_text_node_id_is_refused() -> None:
    with pytest.raises(ValueError, match="node id is text"):
        parse_node_id(42)  # type: ignore[arg-type]


def test_long_string_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 4096"):
        parse_node_id("ns=2;s=" + "x" * 5000)


def test_format_node_id_checks_its_input() -> None:
    assert format_node_id(0, "i", 85) == "i=85"
    assert format_node_id(URI, "g", GUID) == f"nsu={URI};g={GUID}"
    with pytest.raises(ValueError, match="must be bytes"):
        format_node_id(2, "b", "text")
    with pytest.raises(ValueError, match="unknown identifier type"):
        format_node_id(2, "x", 1)  # type: ignore[arg-type]


# -- browse paths ---------------------------------------------------------------------------


def test_browse_path_with_indexes() -> None:
    path = parse_browse_path("0:Objects/2:MachineLine/2:Mill1/2:SpindleSpeed")
    assert path.elements == (
        PathElement(0, "Objects"),
        PathElement(2, "MachineLine"),
        PathElement(2, "Mill1"),
        PathElement(2, "SpindleSpeed"),
    )
    assert path.namespaces == {0, 2}


def test_browse_path_with_uris_and_aliases() -> None:
    path = parse_browse_path(f"/Objects/nsu={URI};MachineLine/ml:Mill1/nsu=http://x.org/a/b;Speed")
    assert path.elements == (
        PathElement(0, "Objects"),
        PathElement(URI, "MachineLine"),
        PathElement("ml", "Mill1"),
        PathElement("http://x.org/a/b", "Speed"),  # '/' inside the URI is not a separator
    )


def test_browse_path_escapes() -> None:
    path = parse_browse_path("2:a&/b/2:x&:y/c&&d/2:semi;colon")
    assert [e.name for e in path.elements] == ["a/b", "x:y", "c&d", "semi;colon"]
    assert parse_browse_path(path.to_string()) == path


def test_browse_path_text_round_trips() -> None:
    text = f"0:Objects/nsu={URI};MachineLine/ml:Mill1/2:Spindle&/Speed"
    path = parse_browse_path(text)
    assert path.to_string() == text
    assert str(path) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty browse path"),
        ("/", "empty browse path"),
        ("0:Objects/", "ends with '/'"),
        ("0:Objects//2:Line", "has no browse name"),
        ("2:", "has no browse name"),
        (":Name", "empty namespace"),
        ("0:Objects/x&", "escapes nothing"),
        ("0:Objects/nsu=urn:x:y", "without ';'"),
        ("0:Objects/nsu=;Name", "empty nsu="),
        ("99999:Name", "outside 0..65535"),
    ],
)
def test_bad_browse_paths_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="browse path") as info:
        parse_browse_path(text)
    assert message in str(info.value)


def test_non_text_browse_path_is_refused() -> None:
    with pytest.raises(ValueError, match="browse path is text"):
        parse_browse_path(None)  # type: ignore[arg-type]


# -- resolving namespaces ---------------------------------------------------------------------

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:server", "urn:vendor:a", URI]


def test_namespace_index_by_uri_alias_and_index() -> None:
    assert namespace_index(URI, NAMESPACES) == 3
    assert namespace_index("ml", NAMESPACES, {"ml": URI}) == 3
    assert namespace_index(2, NAMESPACES) == 2
    assert namespace_index(0, []) == 0


def test_namespace_index_follows_the_server_not_the_config() -> None:
    """The same URI resolves to a new index when the server renumbers its namespaces."""
    shifted = [*NAMESPACES[:2], "urn:extra:1", "urn:extra:2", URI]
    assert namespace_index(URI, NAMESPACES) == 3
    assert namespace_index(URI, shifted) == 4


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("urn:missing", "namespace 'urn:missing' is not on the server"),
        ("nope", "namespace alias 'nope' is not defined"),
        (7, "namespace index 7 is not on the server"),
    ],
)
def test_namespace_index_missing(namespace: int | str, message: str) -> None:
    with pytest.raises(LookupError) as info:
        namespace_index(namespace, NAMESPACES, {"ml": URI})
    assert message in str(info.value)


# -- property: format and parse are inverse ---------------------------------------------------

_uris = st.sampled_from([URI, "http://opcfoundation.org/UA/DI/", "urn:a;b%c", "ml"])
_namespaces = st.one_of(st.integers(0, 65535), _uris)
_refs = st.one_of(
    st.builds(NodeRef, _namespaces, st.just("i"), st.integers(0, 2**32 - 1)),
    st.builds(
        NodeRef, _namespaces, st.just("s"), st.text(min_size=1, max_size=40).filter(str.strip)
    ),
    st.builds(NodeRef, _namespaces, st.just("g"), st.uuids()),
    st.builds(NodeRef, _namespaces, st.just("b"), st.binary(min_size=1, max_size=32)),
)


@given(_refs)
def test_node_ref_round_trip(ref: NodeRef) -> None:
    parsed = parse_node_id(ref.to_string())
    if ref.kind == "s" and ref.to_string() != ref.to_string().strip():
        return  # surrounding whitespace of the whole text is trimmed by design
    assert parsed == ref


_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20
).filter(lambda s: s == s.strip())
_elements = st.builds(
    PathElement,
    st.one_of(st.integers(0, 65535), st.sampled_from([URI, "http://x.org/a/b", "ml"])),
    _names,
)


@given(st.lists(_elements, min_size=1, max_size=6))
def test_browse_path_round_trip(elements: list[PathElement]) -> None:
    path = BrowsePath(tuple(elements))
    assert parse_browse_path(path.to_string()) == path
