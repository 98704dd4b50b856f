"""upsert / get / get_document / delete in each wire mode, round trips, and bad inputs mapped to exceptions.

The ``packed-*`` cases need the server's packed token support (contract-packed)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import chamfer

from .conftest import Server

MODES = {
    "json": {"vectors": "json"},
    "packed-f16": {"vectors": "packed", "dtype": "f16"},
    "packed-f32": {"vectors": "packed", "dtype": "f32"},
}


@pytest.fixture(params=list(MODES))
def mode_client(request: pytest.FixtureRequest, server: Server) -> Iterator[chamfer.Client]:
    with chamfer.Client(server.url, **MODES[request.param]) as c:
        yield c


def f16_exact(rng: np.random.Generator, shape: tuple[int, int], dtype: str = "float32") -> np.ndarray:
    """Random values that float16 represents exactly (the server stores f16), in ``dtype``."""
    return rng.standard_normal(shape).astype(np.float16).astype(dtype)


def test_round_trip(mode_client: chamfer.Client, fresh: str) -> None:
    rng = np.random.default_rng(1)
    docs = [f16_exact(rng, (n, 4)) for n in (1, 3, 7)]
    docs[1] = docs[1].astype(np.float16)  # f16 input goes as it is
    docs[2] = docs[2].astype(np.float64)  # f64 input is narrowed
    ids = ["a", "b/with slash", "c#frag é"]
    meta = [{"lang": "en", "n": 1}, None, {"tags": ["x", "y"]}]
    r = mode_client.upsert(fresh, ids, docs, meta)
    assert r.upserted == 3 and r.sequence > 0
    got = mode_client.get(fresh, ids + ["zzz"])
    assert got.missing == ["zzz"]
    by_id = got.by_id()
    assert set(by_id) == set(ids) and len(got) == 3
    for i, doc_id in enumerate(ids):
        d = by_id[doc_id]
        assert d.n_tokens == docs[i].shape[0]
        assert d.metadata == (meta[i] or {})
        assert d.tokens is not None and d.tokens.dtype == np.float32
        np.testing.assert_array_equal(d.tokens, docs[i].astype(np.float32))
        one = mode_client.get_document(fresh, doc_id)
        np.testing.assert_array_equal(one.tokens, docs[i].astype(np.float32))
        assert one.metadata == (meta[i] or {})
    no_tokens = mode_client.get(fresh, "a", with_tokens=False)
    assert [d.id for d in no_tokens] == ["a"] and no_tokens.documents[0].tokens is None


def test_three_d_array_and_replace(client: chamfer.Client, fresh: str) -> None:
    batch = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 8
    client.upsert(fresh, ["p", "q"], batch)
    np.testing.assert_array_equal(client.get_document(fresh, "q").tokens, batch[1])
    client.upsert(fresh, ["q"], [np.ones((1, 4))], [{"v": 2}])
    q = client.get_document(fresh, "q")
    assert q.n_tokens == 1 and q.metadata == {"v": 2}


def test_delete(client: chamfer.Client, fresh: str) -> None:
    client.upsert(fresh, ["a", "b", "c"], [np.eye(4)[:1]] * 3)
    d = client.delete(fresh, ["a", "zzz"])
    assert d.deleted == 1 and d.sequence > 0
    assert client.delete(fresh, "b").deleted == 1
    assert [x.id for x in client.get(fresh, ["a", "b", "c"])] == ["c"]
    with pytest.raises(chamfer.NotFound) as e:
        client.get_document(fresh, "a")
    assert e.value.code == "not_found" and e.value.status == 404
    assert not isinstance(e.value, chamfer.CollectionNotFound)


def test_bad_documents_raise_mapped_exceptions(mode_client: chamfer.Client, fresh: str) -> None:
    c = mode_client
    cases = [
        (["a"], [np.ones((2, 5))], chamfer.DimensionMismatch, "dimension_mismatch"),
        (["a"], [np.array([[1.0, np.nan, 0, 0]])], chamfer.InvalidArgument, "non_finite"),
        (["a"], [np.zeros((0, 4))], chamfer.InvalidArgument, "empty"),
        (["a", "a"], [np.ones((1, 4))] * 2, chamfer.InvalidArgument, "duplicate_id"),
        (["a"], [np.full((1, 4), 1e6)], chamfer.InvalidArgument, "out_of_range"),
    ]
    for ids, emb, exc, code in cases:
        with pytest.raises(exc) as e:
            c.upsert(fresh, ids, emb)
        assert e.value.code == code, (code, e.value)
        # JSON cannot carry NaN: that one is refused before sending, with the server's code
        assert e.value.status == (None if code == "non_finite" and c.vectors == "json" else 400)
        assert isinstance(e.value, ValueError)
    with pytest.raises(chamfer.TooLarge) as big:
        c.upsert(fresh, ["a"], [np.ones((5000, 4))])
    assert big.value.status == 413 and big.value.code == "too_many_tokens"
    with pytest.raises(chamfer.CollectionNotFound):
        c.upsert("no_such_collection", ["a"], [np.ones((1, 4))])
    assert c.get(fresh, ["a"]).missing == ["a"]  # nothing of the above was stored


def test_inputs_that_cannot_be_encoded_fail_before_sending(client: chamfer.Client, fresh: str) -> None:
    for ids, emb, meta in [
        (["a"], [np.ones(4)], None),  # 1-D
        (["a"], [np.array([["x", "y"]])], None),  # not numbers
        (["a", "b"], [np.ones((1, 4))], None),  # lengths differ
        (["a"], [np.ones((1, 4))], [{}, {}]),
        ("a", [np.ones((1, 4))], None),  # one string, not a list of ids
    ]:
        with pytest.raises(chamfer.InvalidArgument) as e:
            client.upsert(fresh, ids, emb, meta)
        assert e.value.code == "client_invalid_argument" and e.value.status is None


def test_torch_tensors(client: chamfer.Client, fresh: str) -> None:
    torch = pytest.importorskip("torch")  # optional dependency
    t = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 4
    client.upsert(fresh, ["t"], [t])
    np.testing.assert_array_equal(client.get_document(fresh, "t").tokens, t.numpy())
    hits = client.search(fresh, t, k=1)
    assert hits[0].id == "t"
