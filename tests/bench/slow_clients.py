"""Issue 21 check: N slow connections against `chamfer serve` under a descriptor limit; new clients still served.

Usage: python3 slow_clients.py BIN DATADIR N [header_timeout_ms]
Starts BIN serve under `prlimit --nofile=1024:1024`, opens N connections to the REST port (half send an
unfinished request head, half an unfinished body) and N/4 to the gRPC port (an HTTP/2 preface only), then times
fresh REST requests (/healthz) and a fresh gRPC call (`chamfer collections list`), and finally counts how many slow
connections the server closed by the timeout.
"""
import os, socket, subprocess, sys, time, json, re, urllib.request

bin_, datadir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
http_port, grpc_port = 18480, 18451
env = dict(os.environ, CHAMFER_HEADER_READ_TIMEOUT_MS=str(timeout_ms), CHAMFER_BODY_READ_TIMEOUT_MS=str(timeout_ms),
           CHAMFER_IDLE_TIMEOUT_MS=str(timeout_ms))
srv = subprocess.Popen(["prlimit", "--nofile=1024:1024", bin_, "serve", "--data-dir", datadir,
                        "--http-addr", f"127.0.0.1:{http_port}", "--grpc-addr", f"127.0.0.1:{grpc_port}"],
                       env=env, stdout=subprocess.DEVNULL, stderr=open("/tmp/slow-server.log", "w"))
def get(path, t=5):
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=t) as r:
        body = r.read()
    return r.status, time.perf_counter() - t0, body
for _ in range(200):
    try:
        get("/healthz"); break
    except Exception:
        time.sleep(0.05)
slow = []
t_open = time.time()
for i in range(n):
    s = socket.socket(); s.setblocking(True)
    try:
        if i % 5 == 4:
            s.connect(("127.0.0.1", grpc_port)); s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        else:
            s.connect(("127.0.0.1", http_port))
            if i % 2:
                s.sendall(b"POST /v1/collections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            else:
                s.sendall(b"POST /v1/collections HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"na")
        slow.append(s)
    except OSError as e:
        s.close()
print(f"opened {len(slow)} slow connections in {time.time()-t_open:.1f} s")
lat = []
for i in range(20):
    try:
        st, dt, _ = get("/healthz", t=10); lat.append(dt)
    except Exception as e:
        lat.append(float("inf")); print("REST failed:", e)
    time.sleep(0.05)
lat.sort()
print(f"new REST clients: median {lat[10]*1e3:.1f} ms, max {lat[-1]*1e3:.1f} ms over 20 (all under 1 s: {lat[-1] < 1})")
t0 = time.perf_counter()
r = subprocess.run([bin_, "collections", "--addr", f"http://127.0.0.1:{grpc_port}", "list"], capture_output=True, text=True, timeout=30)
print(f"new gRPC client: exit {r.returncode} in {(time.perf_counter()-t0)*1e3:.0f} ms {r.stderr.strip()[:200]}")
# Wait for the timeout, then count the slow connections the server closed.
time.sleep(timeout_ms / 1000 * 1.5 + 2)
closed = 0
for s in slow:
    s.setblocking(False)
    try:
        d = s.recv(4096)
        if d == b"" or d.startswith(b"HTTP/1.1 4") or d.startswith(b"HTTP/1.1 5") or d: closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(f"after {timeout_ms*1.5/1000+2:.0f} s: {closed} of {len(slow)} slow connections closed by the server")
st, _, body = get("/metrics")
for line in body.decode().splitlines():
    if line.startswith("chamfer_connection") or line.startswith("chamfer_net"):
        print(line)
for s in slow: s.close()
srv.terminate(); srv.wait()
