"""The wire forms and the error table, without a server."""

from __future__ import annotations

import numpy as np
import pytest

import chamfer
from chamfer import _ops
from chamfer._io import Request, Response, encode
from chamfer._tokens import TokenCodec, as_matrix, pack, unpack
from chamfer.client import run_sync
from chamfer.errors import error_from_response


def test_packed_layout_is_little_endian_row_major_base64() -> None:
    # the README's gRPC example: [[1, 0, 0, 0]] as f32
    assert pack(np.array([[1, 0, 0, 0]], dtype=np.float32), "f32") == {
        "dtype": "f32",
        "shape": [1, 4],
        "data": "AACAPwAAAAAAAAAAAAAAAA==",
    }
    # f16 1.0 = 0x3C00, 2.0 = 0x4000 -> bytes 00 3C 00 40
    assert pack(np.array([[1.0], [2.0]]), "f16") == {"dtype": "f16", "shape": [2, 1], "data": "ADwAQA=="}


def test_pack_unpack_round_trip_and_views() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(unpack(pack(a, "f32")), a)
    np.testing.assert_array_equal(unpack(pack(a, "f16")), a.astype(np.float16).astype(np.float32))
    view = a[:, ::2]  # not contiguous: packed from a contiguous copy
    np.testing.assert_array_equal(unpack(pack(view, "f32")), view)
    assert unpack(pack(np.zeros((0, 3), np.float32), "f16")).shape == (0, 3)
    assert unpack([[1, 2], [3, 4]]).dtype == np.float32
    assert as_matrix(a) is a  # numpy input is used as it is


def test_values_beyond_f16_go_as_f32() -> None:
    big = np.array([[70000.0, 1.0]], dtype=np.float32)
    assert pack(big, "f16")["dtype"] == "f32"
    assert pack(np.array([[np.nan, 1.0]]), "f16")["dtype"] == "f32"
    assert pack(np.array([[65504.0]]), "f16")["dtype"] == "f16"


def test_codec_options_are_checked() -> None:
    with pytest.raises(chamfer.InvalidArgument):
        TokenCodec("msgpack")  # type: ignore[arg-type]
    with pytest.raises(chamfer.InvalidArgument):
        TokenCodec("packed", "f64")  # type: ignore[arg-type]
    assert TokenCodec("json").encode(np.array([[0.5, 1]], dtype=np.float16)) == [[0.5, 1.0]]


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "malformed", chamfer.InvalidArgument),
        (400, "dimension_mismatch", chamfer.DimensionMismatch),
        (400, "out_of_range", chamfer.InvalidArgument),
        (401, "unauthenticated", chamfer.Unauthenticated),
        (404, "not_found", chamfer.NotFound),
        (404, "collection_not_found", chamfer.CollectionNotFound),
        (409, "already_exists", chamfer.AlreadyExists),
        (413, "too_large", chamfer.TooLarge),
        (429, "overloaded", chamfer.Overloaded),
        (503, "collection_unavailable", chamfer.Unavailable),
        (504, "deadline_exceeded", chamfer.DeadlineExceeded),
        (507, "storage_full", chamfer.StorageFull),
        (500, "corrupt", chamfer.ServerError),
        (400, "some_future_code", chamfer.InvalidArgument),  # unknown code: by status
        (502, "gateway", chamfer.ServerError),
        (418, "teapot", chamfer.ChamferError),
    ],
)
def test_error_table(status: int, code: str, cls: type) -> None:
    e = error_from_response(status, {}, {"code": code, "message": "m"})
    assert type(e) is cls and e.code == code and e.status == status and e.message == "m"
    assert str(e) == f"HTTP {status} {code}: m"


def test_retry_after_and_non_json_errors() -> None:
    e = error_from_response(429, {"retry-after": "2"}, {"code": "overloaded", "message": "slow down"})
    assert isinstance(e, chamfer.Overloaded) and e.retry_after == 2.0
    p = error_from_response(502, {}, None, "<html>bad gateway</html>")
    assert isinstance(p, chamfer.ServerError) and p.code == "http_502" and "bad gateway" in p.message


# ----- request shapes of the packed mode, checked without a server -------------------------------------------


class Recorder:
    """A transport that records requests and answers each with a canned body."""

    def __init__(self, body: object) -> None:
        self.body = body
        self.sent: list[Request] = []

    def __call__(self, req: Request) -> Response:
        self.sent.append(req)
        return Response(200, {}, self.body, "")


def test_packed_mode_requests() -> None:
    codec = TokenCodec("packed", "f16")
    q = np.eye(4, dtype=np.float32)[:2]
    packed_q = pack(q, "f16")

    rec = Recorder({"documents": [{"id": "a", "n_tokens": 2, "metadata": {}, "tokens": packed_q}], "missing": []})
    got = run_sync(_ops.get(codec, "c", ["a"], True, None), rec)
    assert rec.sent[0].body == {"ids": ["a"], "with_tokens": True, "packed": True}
    np.testing.assert_array_equal(got.documents[0].tokens, q)
    run_sync(_ops.get(codec, "c", "a", False, 250), rec)  # no tokens: no packed flag
    assert rec.sent[1].body == {"ids": ["a"], "with_tokens": False} and rec.sent[1].timeout_ms == 250

    rec = Recorder({"id": "a/b", "n_tokens": 2, "metadata": {"x": 1}, "tokens": packed_q})
    doc = run_sync(_ops.get_document(codec, "c", "a/b", None), rec)
    assert rec.sent[0].path == "/v1/collections/c/documents/a%2Fb" and rec.sent[0].params == {"packed": "true"}
    assert doc.metadata == {"x": 1}
    assert encode(rec.sent[0]).target == "/v1/collections/c/documents/a%2Fb?packed=true"

    rec = Recorder({"upserted": 1, "sequence": 3})
    run_sync(_ops.upsert(codec, "c", ["a"], [q], [{"k": "v"}], None), rec)
    assert rec.sent[0].body == {"documents": [{"id": "a", "tokens": packed_q, "metadata": {"k": "v"}}]}

    rec = Recorder({"hits": [{"id": "a", "score": 2.0}], "missing": ["z"]})
    r = run_sync(_ops.rerank(codec, "c", q, ["a", "z"], 5, True), rec)
    assert rec.sent[0].path == "/v1/collections/c/rerank"
    assert rec.sent[0].body == {"query": packed_q, "ids": ["a", "z"], "k": 5, "with_metadata": True}
    assert r.hits == [chamfer.Hit("a", 2.0)] and r.missing == ["z"]

    rec = Recorder({"hits": []})
    run_sync(_ops.rerank_documents(codec, q, {"d": q}, None), rec)
    assert rec.sent[0].path == "/v1/rerank"
    assert rec.sent[0].body == {"query": packed_q, "documents": [{"id": "d", "tokens": packed_q}]}
    rec = Recorder({"results": [{"hits": []}, {"hits": []}]})
    assert run_sync(_ops.rerank_documents_batch(codec, [(q, [("d", q)]), (q, {})], 3), rec) == [[], []]
    assert rec.sent[0].path == "/v1/rerank/batch"
    assert [b["k"] for b in rec.sent[0].body["requests"]] == [3, 3]

    rec = Recorder({"hits": []})
    run_sync(_ops.search(codec, "c", q, 7, {"ids": ["a"]}, {"ef": 20, "exact": None}, 90), rec)
    assert rec.sent[0].body == {"query": packed_q, "k": 7, "ef": 20, "filter": {"ids": ["a"]}}
    assert encode(rec.sent[0]).headers == {"content-type": "application/json", "x-timeout-ms": "90"}


def test_create_collection_body() -> None:
    rec = Recorder({"name": "c", "dimension": 8, "fde": {}, "hnsw": {}, "codebook_size": 16, "stats": {}})
    info = run_sync(
        _ops.create_collection("c", 8, {"seed": 3, "m": 4, "codebook_size": 16, "storage": None}, False), rec
    )
    assert rec.sent[0].body == {"name": "c", "dimension": 8, "fde": {"seed": 3}, "hnsw": {"m": 4}, "codebook_size": 16}
    assert info.codebook_size == 16 and info.stats.documents == 0


def test_a_2048_by_128_document_packed_as_f16_is_under_700_kb() -> None:
    doc = np.zeros((2048, 128), dtype=np.float32)
    body = _ops.upsert_body(TokenCodec("packed", "f16"), ["x"], [doc], None)
    size = len(encode(_ops.upsert_request("c", body)).content or b"")
    assert 4 * (2048 * 128 * 2 // 3 + 1) == 699_052  # the base64 of 524,288 bytes
    assert 699_052 < size < 699_052 + 100  # plus the JSON around it: 1% of the 64 MiB default limit
