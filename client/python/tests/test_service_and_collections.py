"""Health, readiness and every collection method."""

from __future__ import annotations

import numpy as np
import pytest

import chamfer

from .conftest import Server, start_server, stop_server


def test_health_and_ready(client: chamfer.Client) -> None:
    assert client.health() is True
    r = client.ready()
    assert r.ready is True
    assert r.unavailable_collections == [] and r.storage_full == []


def test_create_with_every_parameter_describe_list_drop(client: chamfer.Client) -> None:
    info = client.create_collection(
        "params",
        16,
        num_repetitions=8,
        num_simhash_projections=3,
        seed=7,
        projection_type="ams_sketch",
        projection_dimension=8,
        fill_empty_partitions=True,
        prefix_repetitions=2,
        m=8,
        ef_construction=50,
        storage="f32",
        min_docs=1000,
    )
    assert info.name == "params" and info.dimension == 16
    assert info.fde["num_repetitions"] == 8
    assert info.fde["num_simhash_projections"] == 3
    assert info.fde["seed"] == 7
    assert info.fde["projection_type"] == "ams_sketch"
    assert info.fde["projection_dimension"] == 8
    assert info.fde["fill_empty_partitions"] is True
    assert info.hnsw == {"prefix_repetitions": 2, "m": 8, "ef_construction": 50, "storage": "f32", "min_docs": 1000}
    assert info.stats.documents == 0
    assert client.describe("params") == info
    assert "params" in [c.name for c in client.list_collections()]
    with pytest.raises(chamfer.AlreadyExists) as e:
        client.create_collection("params", 16)
    assert e.value.status == 409 and e.value.code == "already_exists"
    assert client.create_collection("params", 16, exist_ok=True) == info
    client.drop("params")
    assert "params" not in [c.name for c in client.list_collections()]
    with pytest.raises(chamfer.CollectionNotFound) as nf:
        client.describe("params")
    assert nf.value.status == 404 and nf.value.code == "collection_not_found"
    assert isinstance(nf.value, chamfer.NotFound)


def test_codebook_size_is_sent_and_reported(client: chamfer.Client) -> None:
    """Needs the server to accept ``codebook_size`` in the create body (not in the REST API of today's main)."""
    info = client.create_collection("codebook", 8, codebook_size=64)
    try:
        assert info.codebook_size == 64
    finally:
        client.drop("codebook")


def test_unknown_create_parameter_is_a_type_error(client: chamfer.Client) -> None:
    with pytest.raises(TypeError):
        client.create_collection("x", 4, nonsense=1)  # type: ignore[call-arg]


def test_bad_collection_arguments_raise_invalid_argument(client: chamfer.Client) -> None:
    with pytest.raises(chamfer.InvalidArgument) as e:
        client.create_collection("bad name!", 4)
    assert e.value.status == 400 and e.value.code == "invalid_argument"
    with pytest.raises(chamfer.InvalidArgument) as e2:
        client.create_collection("badconfig", 4, m=100000)
    assert e2.value.code == "invalid_config"


def test_flush_and_compact(client: chamfer.Client, fresh: str) -> None:
    client.upsert(fresh, ["a", "b"], [[[1, 0, 0, 0]], [[0, 1, 0, 0]]])
    info = client.flush(fresh)
    assert info.stats.memtable_documents == 0 and info.stats.shards == 1
    client.upsert(fresh, ["c"], [[[0, 0, 1, 0]]])
    client.delete(fresh, ["a"])
    assert client.flush(fresh).stats.shards == 2
    info = client.compact(fresh)
    assert info.stats.shards == 1 and info.stats.documents == 2 and info.stats.tombstones == 0
    for op in (client.flush, client.compact, client.drop):
        with pytest.raises(chamfer.CollectionNotFound):
            op("no_such_collection")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = start_server(
        tmp_path_factory.mktemp("keyed") / "data",
        env={"CHAMFER_API_KEY": "open-sesame", "CHAMFER_MAX_REQUEST_BYTES": "200000"},
    )
    yield s
    stop_server(s)


def test_api_key(keyed_server: Server) -> None:
    with chamfer.Client(keyed_server.url) as anonymous:
        assert anonymous.health()  # health endpoints need no key
        with pytest.raises(chamfer.Unauthenticated) as e:
            anonymous.list_collections()
        assert e.value.status == 401 and e.value.code == "unauthenticated"
    with chamfer.Client(keyed_server.url, api_key="wrong") as wrong, pytest.raises(chamfer.Unauthenticated):
        wrong.list_collections()
    with chamfer.Client(keyed_server.url, api_key="open-sesame") as c:
        assert c.list_collections() == []


def test_no_server_is_a_transport_error() -> None:
    from .conftest import free_port

    with chamfer.Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c, pytest.raises(chamfer.TransportError) as e:
        c.health()
    assert e.value.status is None and e.value.code == "transport"


def test_body_over_the_limit_is_too_large(keyed_server: Server) -> None:
    """The server answers 413 before reading a large body and closes: the client still reports the 413."""
    with chamfer.Client(keyed_server.url, api_key="open-sesame", vectors="json") as c:
        c.create_collection("limits", 128)
        for n_docs in (5, 300):  # 0.26 MB and 15 MB of JSON
            with pytest.raises(chamfer.TooLarge) as e:
                c.upsert("limits", [f"d{i}" for i in range(n_docs)], [np.ones((100, 128))] * n_docs)
            assert e.value.status == 413 and e.value.code == "too_large"
        assert c.describe("limits").stats.documents == 0
