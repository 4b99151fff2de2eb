"""How many slow requests one fakemodel.py process holds, and at what CPU cost.

    python3 tests/bench/fakemodel_load.py [N]        (default 2000; raise `ulimit -n` for more)

Starts tests/helpers/fakemodel.py, then for each scenario opens N connections at once (one
request each, an asyncio client in this process) and prints the client's view (wall time,
latency) beside the server's (its records from /_stats: how long it held each request, how
many clients it saw hang up, and its CPU seconds from /proc). Stops the server by PID.
Scenarios: N x /delay?s=1; N streamed completions of 10 tokens 0.1 s apart; N x /delay?s=5
whose clients hang up after 0.5 s (the server should see each within milliseconds); and
keep-alive throughput of quick requests (50 connections x 200 requests).
"""
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "helpers", "fakemodel.py")
CHAT = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(path, body=None, close=True, rid=""):
    b = (body or "").encode()
    return (("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n%s\r\n"
             % ("POST" if body else "GET", path, len(b), rid,
                "Connection: close\r\n" if close else "")).encode() + b)


HUNG_UP = {}  # request id -> time.time() when this client closed its connection
IDS = iter(range(1 << 62))


async def one(port, path, body, hangup, out):
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        rid = "c%d" % next(IDS) if hangup else ""
        w.write(request(path, body, rid=rid))
        if hangup:
            await asyncio.sleep(hangup)
            w.close()
            HUNG_UP[rid] = time.time()
            out.append(True)
            return
        data = await r.read()  # until the server closes (Connection: close)
        w.close()
        out.append(data.startswith(b"HTTP/1.1 200") and time.monotonic() - t0)
    except OSError:
        out.append(False)


async def keepalive(port, count, out):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        w.write(request("/status?code=200", close=False))
        await r.readuntil(b"\r\n\r\n")
        await r.readexactly(len(b'{"status": 200}'))
        out.append(True)
    w.close()


def admin(port, path, method="GET"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    return json.load(urllib.request.urlopen(req, timeout=30))


async def scenario(name, port, pid, coros, hangup=0):
    admin(port, "/_reset", "POST")
    out, c0, t0 = [], cpu_seconds(pid), time.monotonic()
    await asyncio.wait_for(asyncio.gather(*coros(out)), 120)
    wall = time.monotonic() - t0
    if hangup:  # let the server notice the last hang-ups
        await asyncio.sleep(0.2)
    cpu, st = cpu_seconds(pid) - c0, admin(port, "/_stats")
    ok = [x for x in out if x]
    print("%s: %d/%d ok, wall %.2f s (%.0f/s), server CPU %.2f s"
          % (name, len(ok), len(out), wall, len(ok) / wall, cpu))
    ev = [e for e in st["events"] if e["closed"]]
    if ev:
        held = sorted(e["closed"] - e["started"] for e in ev)
        starts = [e["started"] for e in ev]
        print("  server: %d completed, %d closed by client; all began within %.2f s; held "
              "%.3f .. %.3f s (median %.3f)" % (st["completed"], st["closed_by_client"],
                                               max(starts) - min(starts), held[0], held[-1],
                                               held[len(held) // 2]))
    lag = sorted(e["closed"] - HUNG_UP[e["id"]] for e in ev if e["id"] in HUNG_UP)
    if lag:
        print("  server saw each hang-up %.1f .. %.1f ms after the client closed (median %.1f, "
              "99%% %.1f)" % (lag[0] * 1e3, lag[-1] * 1e3, lag[len(lag) // 2] * 1e3,
                             lag[int(len(lag) * 0.99)] * 1e3))


async def main(n):
    srv = subprocess.Popen([sys.executable, SERVER, "--max-seconds", "300"],
                           stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[1])
        await scenario("%d x /delay?s=1" % n, port, srv.pid,
                       lambda o: [one(port, "/delay?s=1", None, 0, o) for _ in range(n)])
        await scenario("%d streamed completions, 10 tokens 0.1 s apart" % n, port, srv.pid,
                       lambda o: [one(port, "/v1/chat/completions?tokens=10&pace=0.1", CHAT, 0, o)
                                  for _ in range(n)])
        await scenario("%d x /delay?s=5, hung up after 0.5 s" % n, port, srv.pid,
                       lambda o: [one(port, "/delay?s=5", None, 0.5, o) for _ in range(n)], 0.5)
        await scenario("keep-alive: 50 connections x 200 quick requests", port, srv.pid,
                       lambda o: [keepalive(port, 200, o) for _ in range(50)])
    finally:
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
