# celery_agents.py -- Celery with a gevent pool beside binduq's agents figure (Redis broker).
#   python3 celery_agents.py produce     queues PEER_N tasks (the 300-byte operation as the
#                                        argument), one apply_async each
#   python3 -m celery -A celery_agents worker -P gevent -c PEER_CONCURRENCY -Q PEER_QUEUE
#                                        (PYTHONPATH naming this folder) runs them
# The task makes the request binduq's agents handler makes: a POST of the same JSON to
# PEER_MODEL (the fake model server's chat completion) and the stream read to its end, on
# http.client (cooperative under the gevent pool's monkey-patching) with kept-alive
# connections reused from a free list. Timed inside the tasks (the worker's greenlets share
# this module): when the PEER_N-th completes, the worker writes to PEER_OUT one line
# "n=<tasks> span=<first start to last end, s> cpu_s=<utime+stime since worker_init>
# hwm_kb=<VmHWM>", or "error=<...>" when a call fails; the driver then stops it by PID.
import http.client
import json
import os
import resource
import sys
import time
import urllib.parse

from celery import Celery, signals

port = int(os.environ.get("PEER_PORT", "6379"))
queue = os.environ.get("PEER_QUEUE", "peers")
n = int(os.environ.get("PEER_N", "10000"))
prefix = os.environ.get("PEER_PREFIX", "p")
out = os.environ.get("PEER_OUT")
model = urllib.parse.urlsplit(os.environ.get("PEER_MODEL", "http://127.0.0.1:9/v1/chat/completions"))
path = model.path + ("?" + model.query if model.query else "")
BODY = json.dumps({"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()

app = Celery("celery_agents", broker=f"redis://127.0.0.1:{port}/0")
app.conf.task_default_queue = queue

free = []  # idle kept-alive connections, last in first out
state = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": 0.0, "failed": False}


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@signals.worker_init.connect
def _init(**_):
    state["cpu0"] = cpu()


def report(line):
    with open(out + ".tmp", "w") as f:
        f.write(line + "\n")
    os.rename(out + ".tmp", out)


@app.task(name="agents.call", ignore_result=True)
def call(task):
    t0 = time.monotonic()
    if not state["first"]:
        state["first"] = t0
    conn = free.pop() if free else http.client.HTTPConnection(model.hostname, model.port, timeout=60)
    try:
        conn.request("POST", path, body=BODY,
                     headers={"Content-Type": "application/json", "X-Request-Id": task["task_id"]})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or b"[DONE]" not in data:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    except Exception as e:
        conn.close()
        if out and not state["failed"]:
            state["failed"] = True
            report(f"error={e!r}")
        raise
    free.append(conn)
    state["n"] += 1
    state["last"] = time.monotonic()
    if state["n"] == n and out:
        with open("/proc/self/status") as f:
            hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        report(f"n={state['n']} span={state['last'] - state['first']:.6f} cpu_s={cpu() - state['cpu0']:.3f} "
               f"hwm_kb={hwm}")


def task(i):
    t = {"type": "run", "task_id": f"{prefix}{i}", "conversation_id": "c", "messages": [""],
         "timestamp": "2026-01-01T00:00:00.000Z"}
    t["messages"][0] = "x" * (300 - len(json.dumps(t, separators=(",", ":"))))
    return t


if __name__ == "__main__" and sys.argv[1:] == ["produce"]:
    for i in range(1, n + 1):
        call.apply_async(args=(task(i),), queue=queue)
    print(f"queued={n}")
