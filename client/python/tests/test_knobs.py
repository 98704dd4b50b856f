"""One schema: the client's knob types against the server's ``/openapi.json``, and every search knob and collection
parameter sent through the Python client and read back (collection parameters from the collection's description,
search knobs from the search's echo)."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import numpy as np

import chamfer
from chamfer._knobs import CollectionParams, SearchKnobs
from chamfer._ops import COLLECTION_PARAMS, SEARCH_KNOBS

from .conftest import Server


def _kind(doc: dict[str, Any], prop: dict[str, Any]) -> Any:
    """A property's Python kind: "int", "bool", or the frozenset of an enum's strings (null dropped)."""
    if "$ref" in prop:
        return _kind(doc, doc["components"]["schemas"][prop["$ref"].rsplit("/", 1)[-1]])
    if "enum" in prop:
        return frozenset(v for v in prop["enum"] if v is not None)
    for key in ("oneOf", "anyOf"):
        if key in prop:
            kinds = [_kind(doc, p) for p in prop[key]]
            kinds = [k for k in kinds if k != "null"]
            if all(isinstance(k, frozenset) for k in kinds):
                return frozenset().union(*kinds)
            assert len(kinds) == 1, prop
            return kinds[0]
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    types = [t for t in types if t != "null"]
    if not types:
        return "null"
    assert len(types) == 1, prop
    return {"integer": "int", "boolean": "bool", "string": "str"}[types[0]]


def _py_kind(t: Any) -> Any:
    if typing.get_origin(t) is typing.Literal:
        return frozenset(typing.get_args(t))
    return {int: "int", bool: "bool", str: "str"}[t]


def test_knob_types_are_the_served_schema(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]

    search = schemas["Search"]["properties"]
    served = {name: _kind(doc, p) for name, p in search.items() if name not in ("query", "k", "filter")}
    hints = typing.get_type_hints(SearchKnobs)
    assert set(SEARCH_KNOBS) == set(served) == set(hints)
    assert {name: _py_kind(t) for name, t in hints.items()} == served

    sections: dict[str, str | None] = {}
    kinds: dict[str, Any] = {}
    for schema, section in (("FdeParamsIn", "fde"), ("HnswParamsIn", "hnsw")):
        for name, p in schemas[schema]["properties"].items():
            sections[name] = section
            kinds[name] = _kind(doc, p)
    for name, p in schemas["CreateCollection"]["properties"].items():
        if name not in ("name", "dimension", "fde", "hnsw"):
            sections[name] = None
            kinds[name] = _kind(doc, p)
    hints = typing.get_type_hints(CollectionParams)
    assert COLLECTION_PARAMS == sections
    assert {name: _py_kind(t) for name, t in hints.items()} == kinds
    # Every collection parameter documents the engine's default.
    for schema in ("FdeParamsIn", "HnswParamsIn"):
        for name, p in schemas[schema]["properties"].items():
            assert "default" in p, f"{schema}.{name}"
    assert "default" in schemas["CreateCollection"]["properties"]["codebook_size"]


#: A value other than the default for every collection parameter (final_projection_dimension: 0 is the only one an
#: index accepts).
PARAMS: dict[str, Any] = {
    "num_repetitions": 6,
    "num_simhash_projections": 3,
    "seed": 7,
    "projection_type": "identity",
    "projection_dimension": 8,
    "fill_empty_partitions": True,
    "final_projection_dimension": 0,
    "prefix_repetitions": 3,
    "m": 12,
    "ef_construction": 50,
    "storage": "f32",
    "min_docs": 10,
    "codebook_size": 64,
}

#: A value for every search knob (with_metadata and exact are bools; exact false so that the other knobs apply).
KNOBS: dict[str, Any] = {
    "nprobe": 7,
    "ef": 40,
    "candidates": 30,
    "rerank": 20,
    "prefix_repetitions": 3,
    "exact": False,
    "with_metadata": True,
}


def test_every_knob_and_parameter_reaches_the_server(client: chamfer.Client) -> None:
    assert set(PARAMS) == set(COLLECTION_PARAMS) and set(KNOBS) == set(SEARCH_KNOBS)
    info = client.create_collection("knobs_py", 4, **PARAMS)  # type: ignore[arg-type]
    try:
        for name, section in COLLECTION_PARAMS.items():
            got = getattr(info, name) if section is None else getattr(info, section)[name]
            want = None if name == "final_projection_dimension" else PARAMS[name]
            assert got == want, name
        assert client.describe("knobs_py") == info
        rng = np.random.default_rng(3)
        client.upsert("knobs_py", [f"d{i}" for i in range(40)], [rng.normal(size=(3, 4)) for _ in range(40)])
        hits = client.search("knobs_py", rng.normal(size=(2, 4)), 5, **KNOBS)  # type: ignore[arg-type]
        assert len(hits) == 5 and all(h.metadata is not None for h in hits)
        assert hits.knobs == {"k": 5, **KNOBS}
        # Unset knobs are echoed as unset (the engine's default).
        plain = client.search("knobs_py", rng.normal(size=(2, 4)), 3)
        assert plain.knobs == {"k": 3, **{n: None for n in KNOBS}, "exact": False, "with_metadata": False}
        batch = client.search_batch("knobs_py", [rng.normal(size=(2, 4))] * 2, 4, nprobe=9)
        assert [r.knobs["nprobe"] for r in batch] == [9, 9]
    finally:
        client.drop("knobs_py")
