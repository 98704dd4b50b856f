"""upload(): batching, resume by id, and retries (driven through a scripted transport: no server needed to make
it answer 429 / 503 on cue)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import chamfer
from chamfer import _upload
from chamfer._io import Request, Response
from chamfer._tokens import TokenCodec
from chamfer.client import run_sync

from .conftest import DemoSet


def test_upload_resumes_by_id(client: chamfer.Client, fresh: str) -> None:
    rng = np.random.default_rng(3)
    ids = [f"d{i}" for i in range(50)]
    emb = [rng.standard_normal((int(rng.integers(1, 6)), 4)).astype(np.float32) for _ in ids]
    first = client.upload(fresh, ids[:20], emb[:20], batch_size=7, progress=False)
    assert (first.uploaded, first.skipped, first.batches) == (20, 0, 3)
    # "interrupted" after 20: a re-run of the whole upload sends only the other 30
    second = client.upload(fresh, ids, emb, [{"i": i} for i in range(50)], batch_size=8, parallel=3, progress=False)
    assert (second.uploaded, second.skipped) == (30, 20)
    assert client.describe(fresh).stats.documents == 50
    got = client.get(fresh, ids).by_id()
    assert got["d0"].metadata == {} and got["d49"].metadata == {"i": 49}
    np.testing.assert_allclose(got["d33"].tokens, emb[33], atol=1e-3)  # stored as f16
    again = client.upload(fresh, ids, emb, batch_size=16, progress=False)
    assert (again.uploaded, again.skipped, again.batches) == (0, 50, 0)
    forced = client.upload(fresh, ids[:5], emb[:5], resume=False, progress=False)
    assert forced.uploaded == 5


def test_upload_error_stops_and_raises(client: chamfer.Client, fresh: str) -> None:
    emb = [np.ones((1, 4))] * 10
    emb[6] = np.ones((1, 3))
    with pytest.raises(chamfer.DimensionMismatch):
        client.upload(fresh, [f"x{i}" for i in range(10)], emb, batch_size=2, parallel=1, progress=False)


def test_async_upload_and_methods(server, demo: str, demo_set: DemoSet) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async def main() -> None:
        async with chamfer.AsyncClient(server.url, vectors="json") as c:
            assert await c.health()
            assert (await c.ready()).ready
            await c.create_collection("async_c", 4)
            r = await c.upload(
                "async_c",
                ["a", "b", "c"],
                [np.eye(4)[:2], np.eye(4)[2:3], np.eye(4)[3:]],
                batch_size=1,
                parallel=3,
                progress=False,
            )
            assert (r.uploaded, r.batches) == (3, 3)
            assert (await c.upload("async_c", ["a", "z"], [np.eye(4)[:1]] * 2, progress=False)).skipped == 1
            assert (await c.upsert("async_c", ["d"], [np.ones((1, 4))])).upserted == 1
            assert (await c.describe("async_c")).stats.documents == 5
            assert "async_c" in [x.name for x in await c.list_collections()]
            got = await c.get("async_c", ["a", "q"])
            assert got.missing == ["q"] and np.array_equal(got.documents[0].tokens, np.eye(4)[:2])
            assert (await c.get_document("async_c", "b")).n_tokens == 1
            hits = await c.search("async_c", np.eye(4)[2:3], 1)
            assert hits[0].id == "b"
            assert [h[0].id for h in await c.search_batch("async_c", [np.eye(4)[3:], np.eye(4)[:1]], 1)] == ["c", "a"]
            assert (await c.delete("async_c", ["d"])).deleted == 1
            assert (await c.flush("async_c")).stats.shards == 1
            assert (await c.compact("async_c")).stats.documents == 4
            with pytest.raises(chamfer.CollectionNotFound):
                await c.describe("nope")
            await c.drop("async_c")
            # the demo collection through the async client: same hits as exact search
            q = demo_set.queries[1]
            assert [h.id for h in await c.search(demo, q, 5)] == [demo_set.doc_ids[r] for r in demo_set.gt_ids[1, :5]]

    asyncio.run(main())


def test_async_rerank(server, demo: str, demo_set: DemoSet) -> None:  # type: ignore[no-untyped-def]
    """Needs the server's re-rank support."""
    import asyncio

    async def main() -> None:
        async with chamfer.AsyncClient(server.url, vectors="json") as c:
            q = demo_set.queries[1]
            want = [demo_set.doc_ids[r] for r in demo_set.gt_ids[1, :3]]
            r = await c.rerank(demo, q, want[::-1])
            assert [h.id for h in r.hits] == want
            docs = {i: demo_set.docs[demo_set.doc_ids.index(i)] for i in want}
            assert [h.id for h in await c.rerank_documents(q, docs)] == want
            assert [h.id for h in (await c.rerank_documents_batch([(q, docs)]))[0]] == want

    asyncio.run(main())


# ----- retries, with a scripted transport ---------------------------------------------------------------------


class Script:
    """Answers each request with the next scripted status (then 200s), recording what was sent."""

    def __init__(self, statuses: list[int], retry_after: str | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.sent: list[Request] = []

    def __call__(self, req: Request) -> Response:
        self.sent.append(req)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            raise chamfer.TransportError("connection reset", code="transport")
        if status != 200:
            code = {429: "overloaded", 503: "unavailable", 400: "empty"}[status]
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return Response(status, headers, {"code": code, "message": "scripted"}, "")
        if req.path.endswith("/documents/get"):
            return Response(200, {}, {"documents": [], "missing": req.body["ids"]}, "")
        return Response(200, {}, {"upserted": len(req.body["documents"]), "sequence": 1}, "")


def scripted_upload(script: Script, n: int = 4, **kw) -> chamfer.UploadResult:  # type: ignore[no-untyped-def]
    policy = _upload.RetryPolicy(max_retries=kw.pop("max_retries", 5), base=0.001, cap=0.01)
    op = _upload.upload(
        TokenCodec("json"),
        "c",
        [f"i{k}" for k in range(n)],
        [np.ones((1, 2))] * n,
        None,
        kw.pop("batch_size", 2),
        1,
        kw.pop("resume", False),
        policy,
        False,
        None,
    )
    return run_sync(op, script)


def test_retries_on_429_503_and_dropped_connections() -> None:
    s = Script([429, 503, 0])
    r = scripted_upload(s)
    assert (r.uploaded, r.batches, r.retries) == (4, 2, 3)
    bodies = [json.dumps(q.body) for q in s.sent]
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]  # the same first batch, resent
    assert len(s.sent) == 5


def test_retry_after_is_honoured() -> None:
    s = Script([429], retry_after="1")
    t0 = time.monotonic()
    r = scripted_upload(s, n=1)
    assert r.retries == 1 and time.monotonic() - t0 >= 0.95


def test_gives_up_after_max_retries_and_does_not_retry_client_errors() -> None:
    with pytest.raises(chamfer.Overloaded) as e:
        scripted_upload(Script([429] * 10), max_retries=2)
    assert e.value.status == 429
    s = Script([400])
    with pytest.raises(chamfer.InvalidArgument):
        scripted_upload(s)
    assert len(s.sent) == 1


def test_resume_lookups_are_retried_too() -> None:
    s = Script([503], retry_after="0")
    r = scripted_upload(s, n=2, resume=True)
    assert r.uploaded == 2 and r.retries == 1
    assert [q.path for q in s.sent] == ["/v1/collections/c/documents/get"] * 2 + ["/v1/collections/c/documents"]
