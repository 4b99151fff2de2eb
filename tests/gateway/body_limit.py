"""Sends the gateway bodies over its limit the way curl cannot, for
tests/integration/gateway_transport_spec.lua: python3 body_limit.py PORT CASE, CASE one of
  expect    headers with Content-Length 10 GB and Expect: 100-continue, no body;
  length    the same without Expect, then body bytes for at most 5 s;
  chunked   a chunked body of 64 KiB chunks for at most 5 s (no length to refuse early).
Prints one JSON line: what came back first (`first`: the status line, "" for a closed
connection, null for nothing), the bytes sent, the seconds it took."""
import json
import socket
import sys
import time

port, case = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
head = "POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n" % port
if case == "chunked":
    head += "Transfer-Encoding: chunked\r\n\r\n"
else:
    head += "Content-Length: 10000000000\r\n"
    head += "Expect: 100-continue\r\n\r\n" if case == "expect" else "\r\n"
s.sendall(head.encode())
chunk = b"a" * 65536
if case == "chunked":
    chunk = b"10000\r\n" + chunk + b"\r\n"
sent, first, t0 = 0, None, time.time()
s.settimeout(0.05)
while time.time() - t0 < 5:
    try:
        got = s.recv(200)
        first = got.split(b"\r\n")[0].decode("latin-1")
        break
    except socket.timeout:
        pass
    except OSError:
        first = ""
        break
    if case != "expect":
        try:
            s.sendall(chunk)
            sent += len(chunk)
        except OSError:
            first = ""
            break
print(json.dumps({"first": first, "sent": sent, "seconds": round(time.time() - t0, 2)}))
