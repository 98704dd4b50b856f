"""Keyword-argument types of :meth:`chamfer.Client.search` and :meth:`chamfer.Client.create_collection`.

They mirror the server's REST schemas (``/openapi.json``: ``Search`` and ``CreateCollection`` with its
``FdeParamsIn`` / ``HnswParamsIn``): ``tests/test_knobs.py`` checks every field name and type against the served
document, so a knob the server gains and this file lacks fails the tests. Defaults are the server's (see the
schemas' ``default`` values and descriptions).
"""

from __future__ import annotations

from typing import Literal, TypedDict


class SearchKnobs(TypedDict, total=False):
    """Search knobs; unset ones take the server's defaults."""

    nprobe: int
    ef: int
    candidates: int
    rerank: int
    prefix_repetitions: int
    exact: bool
    with_metadata: bool


class CollectionParams(TypedDict, total=False):
    """Index parameters of a new collection; unset ones take the server's defaults."""

    num_repetitions: int
    num_simhash_projections: int
    seed: int
    projection_type: Literal["identity", "ams_sketch"]
    projection_dimension: int
    fill_empty_partitions: bool
    final_projection_dimension: int
    prefix_repetitions: int
    m: int
    ef_construction: int
    storage: Literal["f16", "f32"]
    min_docs: int
    codebook_size: int
