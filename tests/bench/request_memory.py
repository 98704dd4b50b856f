"""Issue 21's memory check, outside CI: N concurrent maximum-size uploads against `chamfer serve`.

    python3 tests/bench/request_memory.py target/debug/chamfer [N=32] [REQUEST_MEMORY_BYTES]

Starts the server on free ports and a fresh data directory (default limits: 64 MiB requests, a 1 GiB request
memory budget), sends N REST upserts at once, each 85 documents of 2048 x 128 packed f16 tokens (59 MB of JSON,
just under the 64 MiB limit), samples the server's RssAnon every 10 ms, then reads every acknowledged document
back. Prints the outcomes (status, Retry-After, error code), whether anything acknowledged is missing, and the
RssAnon before, at its peak and after. Exits non-zero if an acknowledged document is missing or an upload got
anything but 200 or 429 `overloaded` with a Retry-After.
"""
import array
import base64
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

DIM, TOKENS, DOCS = 128, 2048, 85


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    budget = sys.argv[3] if len(sys.argv) > 3 else None
    hp, gp = free_port(), free_port()
    env = dict(os.environ, RUST_LOG="warn")
    env.pop("CHAMFER_API_KEY", None)
    if budget:
        env["CHAMFER_REQUEST_MEMORY_BYTES"] = budget
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", tempfile.mkdtemp(),
         "--http-addr", f"127.0.0.1:{hp}", "--grpc-addr", f"127.0.0.1:{gp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return run(server, hp, n, budget)
    finally:
        server.terminate()
        server.wait()


def run(server, port, n, budget):
    def request(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        headers = {"content-type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r.headers, data

    for _ in range(300):
        try:
            if request("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    request("POST", "/v1/collections", json.dumps({"name": "m", "dimension": DIM}).encode())

    rng = random.Random(1)
    datas = []
    for _ in range(DOCS):
        # f16 values in [0.5, 1): exponent 0x3800, random mantissa
        a = array.array("H", (rng.getrandbits(10) | 0x3800 for _ in range(TOKENS * DIM)))
        datas.append(base64.b64encode(a.tobytes()).decode())

    def body(r):
        docs = ",".join(
            '{"id":"r%d-%d","tokens":{"dtype":"f16","shape":[%d,%d],"data":"%s"}}'
            % (r, i, TOKENS, DIM, datas[i]) for i in range(DOCS))
        return ('{"documents":[%s]}' % docs).encode()

    bodies = [body(r) for r in range(n)]
    print(f"{n} uploads of {len(bodies[0])} bytes (limit {64 << 20})", flush=True)

    def rss():
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    before = rss()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    results = [None] * n

    def upload(r):
        try:
            status, headers, data = request("POST", "/v1/collections/m/documents", bodies[r])
            code = None if status == 200 else json.loads(data).get("code")
            results[r] = (status, headers.get("retry-after"), code)
        except OSError as e:
            results[r] = ("error", str(e), None)

    start = time.time()
    threads = [threading.Thread(target=upload, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - start
    time.sleep(0.5)
    stop.set()
    after = rss()
    print("outcomes (status, retry-after, code):", dict(Counter(results)), f"in {took:.1f} s")

    ok = [r for r in range(n) if results[r][0] == 200]
    ids = [f"r{r}-{i}" for r in ok for i in range(DOCS)]
    found = missing = 0
    for k in range(0, len(ids), 1000):
        status, _, data = request("POST", "/v1/collections/m/documents/get",
                                  json.dumps({"ids": ids[k:k + 1000]}).encode())
        v = json.loads(data)
        assert status == 200, v
        found += len(v["documents"])
        missing += len(v["missing"])
    print(f"acknowledged documents {len(ids)}: found {found}, missing {missing}")
    mib = 1 << 20
    print(f"server RssAnon MiB: before {before / mib:.0f}, peak {peak[0] / mib:.0f}, after {after / mib:.0f} "
          f"(request memory budget: {budget or '1 GiB'})")
    bad = [x for x in results if x[0] != 200 and not (x[0] == 429 and x[1] and x[2] == "overloaded")]
    return 1 if missing or bad else 0


if __name__ == "__main__":
    sys.exit(main())
