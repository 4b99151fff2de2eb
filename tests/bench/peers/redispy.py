# redispy.py -- a plain redis-py loop beside binduq: `produce` LPUSHes PEER_N tasks (JSON,
# pipelined 1,000 at a time); `work` takes them one BRPOP at a time (at-most-once, what
# Bindu's own worker does), until PEER_N, then prints its report.
import json, os, sys, time
import redis

port = int(os.environ.get("PEER_PORT", "6379"))
queue = os.environ.get("PEER_QUEUE", "peers")
n = int(os.environ.get("PEER_N", "20000"))
prefix = os.environ.get("PEER_PREFIX", "p")
r = redis.Redis(host="127.0.0.1", port=port)

def task(i):
    t = {"type": "run", "task_id": f"{prefix}{i}", "conversation_id": "c", "messages": [""],
         "timestamp": "2026-01-01T00:00:00.000Z"}
    t["messages"][0] = "x" * (300 - len(json.dumps(t, separators=(",", ":"))))
    return json.dumps(t, separators=(",", ":"))

if sys.argv[1] == "produce":
    for b in range(0, n, 1000):
        p = r.pipeline(transaction=False)
        for i in range(b + 1, min(n, b + 1000) + 1):
            p.lpush(queue, task(i))
        p.execute()
else:
    done, first, last = 0, 0.0, 0.0
    while done < n:
        item = r.brpop(queue, timeout=1)
        if item is None:
            continue
        t0 = time.perf_counter()
        if not first:
            first = t0
        json.loads(item[1])
        done += 1
        last = time.perf_counter()
    print(f"n={done} span={last - first:.6f}")
