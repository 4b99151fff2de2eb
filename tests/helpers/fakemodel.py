"""A fake model server for the HTTP client's tests and benchmarks (standard library only).

    python3 tests/helpers/fakemodel.py [--port N] [--port-file F] [--cert C --key K]
                                       [--max-seconds S] [--pace S] [--verbose]

Listens on 127.0.0.1 only (port 0, the default, takes a free port), prints one line
"PORT <n>" to stdout (and writes "<n>" to --port-file, renamed into place) and then prints
nothing more to stdout. With --cert/--key it speaks TLS only. It exits on SIGTERM or SIGINT
and by itself after --max-seconds (default 600), so it never outlives a test run.

It is one asyncio process with its own small HTTP/1.1 reader (keep-alive, Content-Length or
chunked request bodies, Expect: 100-continue), so one process holds thousands of slow
requests at once. Each request's behaviour is chosen by its query parameters:

  POST /v1/chat/completions   OpenAI-style; body {"model", "messages", "stream", ...}.
      ?delay=S  wait S seconds before the first byte      ?tokens=N  answer "w1 w2 ... wN"
      ?pace=S   seconds between streamed events (default: --pace, 0)
      ?status=N  an OpenAI error JSON
      ?retry_after=S  a Retry-After header (with ?status)
      ?end_after=S  streamed: end the response S seconds after "data: [DONE]" (default 0)
      The answer is "echo: <last user message>" unless ?tokens is given; its tokens are its
      space-separated words. Non-streamed: one chat.completion JSON. Streamed (stream: true):
      text/event-stream, chunked: one chunk event with delta {"role":"assistant","content":""},
      one event per token (delta content: the word, with a leading space after the first),
      one event with finish_reason "stop" (and "usage" if stream_options.include_usage),
      then "data: [DONE]". A body that is not JSON or has no messages is a 400 error JSON.
  GET /delay?s=S              {"delay": S} after S seconds.
  GET /sse?n=N&pace=S         N generic events, see sse_event(); ?crlf=1 ends lines with CRLF
      (?eol=cr with a lone CR), ?bom=1 starts with a UTF-8 BOM, ?tail=1 ends with an
      unterminated event a parser must drop, ?split=B writes in B-byte pieces 1 ms apart.
  GET /big?bytes=N            N bytes of "0123456789abcdef" repeated; ?chunked=1 without
                              Content-Length (chunked transfer encoding).
  GET /slowloris?pace=S       headers (Content-Length: 1000000), then one byte every S
      seconds (default 1) until ?max=S (default and at most 60), then closes; ?stage=headers
      sends the status line and then the header bytes one at a time instead.
  GET /status?code=N          that status with a JSON body {"status": N}; ?retry_after=S.
  GET /redirect?to=PATH       302 (or ?code=301|303|307|308) with Location: PATH.
  GET|POST /echo              the request as JSON: method, path, query, headers (name
                              lower-cased -> value), header_list ([name, value] in order),
                              body (text), body_bytes, json (the body decoded, or null).
  GET /_stats                 {"requests", "open", "closed_by_client", "completed",
      "connections", "connections_open", "events": [{"id", "seq", "method", "path",
      "status", "started", "closed", "closed_by_client", "completed"}]}, times from
      time.time(); ?events=N only the last N events. "id" is the X-Request-Id header or seq.
  POST /_reset                clears the counters and events (connections_open stays).

A request is recorded (the last 10,000) unless its path starts with "/_". "closed" is when
the response was finished (completed: true) or when the client went away (closed_by_client:
true): a write failed or, while the server waits (a delay, a pace, slowloris), the read side
saw EOF or a reset. Both false: the server closed an unfinished response (slowloris at its
?max, or shutdown). "open" counts requests begun and not yet closed.
"""
import argparse
import asyncio
import collections
import json
import os
import signal
import ssl
import sys
import time
import urllib.parse

MAX_HEADER = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
IDLE_SECONDS = 30
MAX_EVENTS = 10000
REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}

VERBOSE = False
PACE = 0.0  # --pace: the chat endpoint's ?pace when a request names none (a client that
            # only knows a base URL, such as examples/agent.lua, still gets a paced stream)


def log(*args):
    if VERBOSE:
        print("fakemodel:", *args, file=sys.stderr, flush=True)


class Gone(Exception):
    """The client went away (EOF or reset while we waited, or a failed write)."""


class BadRequest(Exception):
    pass


class GiveUp(Exception):
    """We close a response we never finish (slowloris at its time limit)."""


# ---- statistics ---------------------------------------------------------------------------

class Record(dict):
    """One request's event, a dict (so json.dumps writes it) that knows its reset epoch."""
    epoch = 0


class Stats:
    def __init__(self):
        self.connections_open = 0
        self.epoch = 0
        self.reset()

    def reset(self):
        self.epoch += 1  # requests begun before a reset no longer count when they end
        self.seq = 0
        self.requests = self.open = self.closed_by_client = self.completed = 0
        self.connections = 0
        self.events = collections.deque(maxlen=MAX_EVENTS)

    def begin(self, method, path, request_id):
        self.seq += 1
        self.requests += 1
        self.open += 1
        ev = Record(id=request_id if request_id is not None else self.seq, seq=self.seq,
                    method=method, path=path, status=None, started=time.time(), closed=None,
                    closed_by_client=False, completed=False)
        ev.epoch = self.epoch
        self.events.append(ev)
        return ev

    def end(self, ev, outcome):
        """outcome: "completed", "client" (the client went away) or "server" (we closed an
        unfinished response: slowloris at its end, or shutdown). Only the first call counts."""
        if ev["closed"] is not None:
            return
        ev["closed"] = time.time()
        ev["completed"] = outcome == "completed"
        ev["closed_by_client"] = outcome == "client"
        if ev.epoch == self.epoch:
            self.open -= 1
            self.completed += outcome == "completed"
            self.closed_by_client += outcome == "client"

    def doc(self, last):
        events = list(self.events)
        if last is not None:
            events = events[-last:] if last > 0 else []
        return {"requests": self.requests, "open": self.open,
                "closed_by_client": self.closed_by_client, "completed": self.completed,
                "connections": self.connections, "connections_open": self.connections_open,
                "events": events}


STATS = Stats()


# ---- one connection: a buffered reader that can watch for EOF without losing bytes --------

class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.eof = False
        self.watch = None  # a task reading ahead while the server waits; see wait()

    async def fill(self):
        if self.watch is not None:
            task, self.watch = self.watch, None
            data = await task
        else:
            data = await self.reader.read(65536)
        if not data:
            self.eof = True
            raise Gone()
        self.buf += data

    async def readline(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > MAX_HEADER:
                raise BadRequest("header line too long")
            await self.fill()

    async def readexactly(self, n):
        while len(self.buf) < n:
            await self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def _read_ahead(self):
        try:
            return await self.reader.read(65536)
        except (ConnectionError, OSError):
            return b""

    async def wait(self, seconds):
        """Sleeps `seconds`; raises Gone as soon as the client closes or resets meanwhile.
        Bytes that arrive meanwhile (a pipelined request) are kept for the next read."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.eof:
                raise Gone()
            if len(self.buf) > MAX_HEADER + MAX_BODY:  # a client pushing on: just sleep
                await asyncio.sleep(left)
                return
            if self.watch is None:
                self.watch = asyncio.ensure_future(self._read_ahead())
            done, _ = await asyncio.wait({self.watch}, timeout=left)
            if not done:
                return
            task, self.watch = self.watch, None
            data = task.result()
            if not data:
                self.eof = True
                raise Gone()
            self.buf += data

    async def send(self, data):
        if self.eof or self.writer.is_closing():
            raise Gone()
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError) as e:
            raise Gone() from e

    def close(self):
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        try:
            self.writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


# ---- HTTP ------------------------------------------------------------------------------------

class Request:
    def __init__(self, method, target, version, headers):
        self.method, self.version, self.header_list = method, version, headers
        parts = urllib.parse.urlsplit(target)
        self.path = parts.path or "/"
        self.query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        self.headers = {}
        for k, v in headers:
            k = k.lower()
            self.headers[k] = self.headers[k] + ", " + v if k in self.headers else v
        self.body = b""

    def num(self, name, default, lo=0.0, hi=3600.0):
        try:
            v = float(self.query.get(name, default))
        except ValueError:
            raise BadRequest("?%s must be a number" % name)
        if v != v or v < lo or v > hi:
            raise BadRequest("?%s out of range" % name)
        return v

    def keep_alive(self):
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


def to_int(text, base=10):
    try:
        return int(text, base)
    except ValueError:
        raise BadRequest("bad number in the request framing: %r" % text)


async def read_request(c):
    line = await c.readline()
    while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 2.2)
        line = await c.readline()
    try:
        method, target, version = line.decode("latin-1").strip().split(" ")
    except ValueError:
        raise BadRequest("bad request line")
    headers, size = [], 0
    while True:
        h = await c.readline()
        size += len(h)
        if size > MAX_HEADER:
            raise BadRequest("headers too large")
        if h in (b"\r\n", b"\n"):
            break
        name, sep, value = h.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("bad header line")
        headers.append([name.strip(), value.strip()])
    req = Request(method, target, version, headers)
    if req.headers.get("expect", "").lower() == "100-continue":
        await c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in req.headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            n = to_int((await c.readline()).split(b";")[0].strip().decode("latin-1") or "0", 16)
            if n == 0:
                while (await c.readline()) not in (b"\r\n", b"\n"):
                    pass
                break
            if len(body) + n > MAX_BODY:
                raise BadRequest("body too large")
            body += await c.readexactly(n)
            await c.readline()
        req.body = bytes(body)
    else:
        n = to_int(req.headers.get("content-length", "0") or "0")
        if n < 0 or n > MAX_BODY:
            raise BadRequest("body too large")
        req.body = await c.readexactly(n) if n else b""
    return req


def head(status, headers):
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
    lines += ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(c, req, ev, status, body, ctype="application/json", extra=()):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    ev["status"] = status
    hdrs = [("Content-Type", ctype), ("Content-Length", str(len(body)))] + list(extra)
    if status in (204, 304):  # these carry no body (RFC 9110 15.3.5, 15.4.5)
        body, hdrs = b"", list(extra)
    if not req.keep_alive():
        hdrs.append(("Connection", "close"))
    await c.send(head(status, hdrs) + (b"" if req.method == "HEAD" else body))


async def start_chunked(c, req, ev, status, ctype, extra=()):
    ev["status"] = status
    hdrs = [("Content-Type", ctype), ("Transfer-Encoding", "chunked")] + list(extra)
    if not req.keep_alive():
        hdrs.append(("Connection", "close"))
    await c.send(head(status, hdrs))


async def chunk(c, data):
    if data:
        await c.send(b"%x\r\n%s\r\n" % (len(data), data))


# ---- the endpoints ---------------------------------------------------------------------------

def last_user_text(messages):
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, dict) and p.get("type") == "text")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


async def chat(c, req, ev):
    delay, pace = req.num("delay", 0), req.num("pace", PACE)
    try:
        body = json.loads(req.body or b"null")
    except ValueError:
        body = None
    status = int(req.num("status", 200, 100, 599))
    if status == 200 and (not isinstance(body, dict) or not isinstance(body.get("messages"), list)):
        status = 400
    await c.wait(delay)
    if status != 200:
        extra = [("Retry-After", req.query["retry_after"])] if "retry_after" in req.query else []
        err = {"error": {"message": "fake error %d" % status, "type": "fake_error",
                         "code": str(status)}}
        return await respond(c, req, ev, status, err, extra=extra)
    if "tokens" in req.query:
        n = int(req.num("tokens", 0, 0, 1e6))
        words = ["w%d" % (i + 1) for i in range(n)]
    else:
        words = ("echo: " + last_user_text(body["messages"])).split()
    model = body.get("model") or "fake-model"
    prompt_tokens = sum(len(str(m.get("content", "")).split())
                        for m in body["messages"] if isinstance(m, dict))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
             "total_tokens": prompt_tokens + len(words)}
    cid, created = "chatcmpl-fake-%d" % ev["seq"], int(time.time())
    if not body.get("stream"):
        doc = {"id": cid, "object": "chat.completion", "created": created, "model": model,
               "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                            "message": {"role": "assistant", "content": " ".join(words)}}],
               "usage": usage}
        return await respond(c, req, ev, 200, doc)

    def event(delta, finish=None, extra=None):
        doc = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                            "logprobs": None}]}
        doc.update(extra or {})
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    await start_chunked(c, req, ev, 200, "text/event-stream",
                        [("Cache-Control", "no-cache")])
    await chunk(c, event({"role": "assistant", "content": ""}))
    for i, w in enumerate(words):
        await c.wait(pace)
        await chunk(c, event({"content": w if i == 0 else " " + w}))
    await c.wait(pace)
    so = body.get("stream_options")
    with_usage = isinstance(so, dict) and so.get("include_usage")
    await chunk(c, event({}, "stop", {"usage": usage} if with_usage else None))
    await chunk(c, b"data: [DONE]\n\n")
    await c.wait(req.num("end_after", 0))
    await c.send(b"0\r\n\r\n")


def sse_event(i):
    """Event i (from 1) of /sse, as lines: a ": keepalive" comment before every fifth; "id: i";
    "event: tick" on even i; on i divisible by 3 two data lines "line 1 of i" and "line 2 of
    i" (so the data is "line 1 of i\\nline 2 of i"), otherwise one "data: event i" ("data:event
    i", no space, on i divisible by 4: the same data). A parser yields for each: id "i", event
    "tick" or "message", and that data."""
    lines = [": keepalive"] if i % 5 == 0 else []
    lines.append("id: %d" % i)
    if i % 2 == 0:
        lines.append("event: tick")
    if i % 3 == 0:
        lines += ["data: line 1 of %d" % i, "data: line 2 of %d" % i]
    elif i % 4 == 0:
        lines.append("data:event %d" % i)
    else:
        lines.append("data: event %d" % i)
    return lines + [""]


async def sse(c, req, ev):
    n, pace = int(req.num("n", 3, 0, 1e6)), req.num("pace", 0)
    eol = "\r" if req.query.get("eol") == "cr" else "\r\n" if req.query.get("crlf") == "1" else "\n"
    split = int(req.num("split", 0, 0, 1e6))

    async def put(data):
        if not split:
            return await chunk(c, data)
        for k in range(0, len(data), split):
            await chunk(c, data[k:k + split])
            await c.wait(0.001)

    await start_chunked(c, req, ev, 200, "text/event-stream", [("Cache-Control", "no-cache")])
    if req.query.get("bom") == "1":
        await put("\ufeff".encode())
    for i in range(1, n + 1):
        if i > 1:
            await c.wait(pace)
        await put(eol.join(sse_event(i)).encode() + eol.encode())
    if req.query.get("tail") == "1":
        await put(("data: unterminated" + eol).encode())
    await c.send(b"0\r\n\r\n")


async def big(c, req, ev):
    n = int(req.num("bytes", 0, 0, 1 << 34))
    pattern = b"0123456789abcdef" * 4096  # 64 KiB
    chunked = req.query.get("chunked") == "1"
    if chunked:
        await start_chunked(c, req, ev, 200, "application/octet-stream")
    else:
        ev["status"] = 200
        hdrs = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
        await c.send(head(200, hdrs))
    sent = 0
    while sent < n:
        piece = pattern[:min(len(pattern), n - sent)]
        await (chunk(c, piece) if chunked else c.send(piece))
        sent += len(piece)
    if chunked:
        await c.send(b"0\r\n\r\n")


async def slowloris(c, req, ev):
    pace, limit = req.num("pace", 1, 0.001), req.num("max", 60, 0, 60)
    deadline = time.monotonic() + limit
    ev["status"] = 200
    if req.query.get("stage") == "headers":
        data = head(200, [("Content-Type", "text/plain"), ("Content-Length", "0")])
    else:
        await c.send(head(200, [("Content-Type", "text/plain"), ("Content-Length", "1000000")]))
        data = b"x" * 1000000
    for k in range(len(data)):
        if time.monotonic() + pace > deadline:
            raise GiveUp()
        await c.wait(pace)
        await c.send(data[k:k + 1])


async def handle(c, req, ev):
    p, m = req.path, req.method
    if p == "/v1/chat/completions" and m == "POST":
        return await chat(c, req, ev)
    if p == "/delay":
        s = req.num("s", 0)
        await c.wait(s)
        return await respond(c, req, ev, 200, {"delay": s})
    if p == "/sse":
        return await sse(c, req, ev)
    if p == "/big":
        return await big(c, req, ev)
    if p == "/slowloris":
        return await slowloris(c, req, ev)
    if p == "/status":
        code = int(req.num("code", 200, 200, 599))
        extra = [("Retry-After", req.query["retry_after"])] if "retry_after" in req.query else []
        return await respond(c, req, ev, code, {"status": code}, extra=extra)
    if p == "/redirect":
        code = int(req.num("code", 302, 300, 399))
        return await respond(c, req, ev, code, {"to": req.query.get("to", "/")},
                             extra=[("Location", req.query.get("to", "/"))])
    if p == "/echo":
        text = req.body.decode("utf-8", "replace")
        try:
            parsed = json.loads(req.body) if req.body else None
        except ValueError:
            parsed = None
        return await respond(c, req, ev, 200, {
            "method": m, "path": p, "query": req.query, "headers": req.headers,
            "header_list": req.header_list, "body": text, "body_bytes": len(req.body),
            "json": parsed})
    return await respond(c, req, ev, 404, {"error": "no such endpoint: %s %s" % (m, p)})


async def admin(c, req):
    dummy = {"status": None}
    if req.path == "/_stats":
        last = int(req.num("events", -1, -1, 1e9)) if "events" in req.query else None
        return await respond(c, req, dummy, 200, STATS.doc(last))
    if req.path == "/_reset" and req.method == "POST":
        STATS.reset()
        return await respond(c, req, dummy, 200, {"reset": True})
    return await respond(c, req, dummy, 404, {"error": "no such endpoint"})


async def serve(reader, writer):
    c = Conn(reader, writer)
    STATS.connections += 1
    STATS.connections_open += 1
    try:
        while True:
            try:
                req = await asyncio.wait_for(read_request(c), IDLE_SECONDS)
            except BadRequest as e:
                msg = str(e).encode()
                await c.send(head(400, [("Content-Type", "text/plain"), ("Connection", "close"),
                                        ("Content-Length", str(len(msg)))]) + msg)
                return
            if req.path.startswith("/_"):
                await admin(c, req)
            else:
                ev = STATS.begin(req.method, req.path, req.headers.get("x-request-id"))
                try:
                    await handle(c, req, ev)
                    STATS.end(ev, "completed")
                except Gone:
                    STATS.end(ev, "client")
                    return
                except GiveUp:
                    return
                except BadRequest as e:
                    await respond(c, req, ev, 400, {"error": str(e)})
                    STATS.end(ev, "completed")
                finally:
                    STATS.end(ev, "server")  # a no-op once ended
            if not req.keep_alive():
                return
    except (Gone, asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
        pass
    except Exception as e:  # one bad connection must never stop the server
        log("connection error:", repr(e))
    finally:
        STATS.connections_open -= 1
        c.close()


# ---- main ------------------------------------------------------------------------------------

def quiet_handler(loop, context):
    log("asyncio:", context.get("message"), repr(context.get("exception")))


async def main(args):
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_handler)
    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(serve, "127.0.0.1", args.port, ssl=ctx, backlog=4096,
                                        reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print("PORT %d" % port, flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % port)
        os.rename(args.port_file + ".tmp", args.port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
        log("signal: exiting")
    except asyncio.TimeoutError:
        log("--max-seconds passed: exiting")
    server.close()
    for t in asyncio.all_tasks():
        if t is not asyncio.current_task():
            t.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--pace", type=float, default=0.0)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if bool(a.cert) != bool(a.key):
        ap.error("--cert and --key go together")
    if not 0 <= a.pace <= 3600:
        ap.error("--pace must be from 0 to 3600 seconds")
    VERBOSE = a.verbose
    PACE = a.pace
    asyncio.run(main(a))
