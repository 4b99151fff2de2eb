"""Task operations byte for byte as Bindu's RedisScheduler writes them.

    python3 tests/helpers/bindu_ops.py OP TASK_ID [CONTEXT_ID [TEXT [TEXT ...]]]
    python3 tests/helpers/bindu_ops.py - < lines     (each line: the same fields, tab-separated)

prints one operation (one a line with "-") (run, pause, resume, cancel) as Bindu queues it: a dict with the keys
in Bindu's order (operation, params, trace_id, span_id), its ids uuid.UUID objects, passed
through json.dumps(op, default=str) -- the same call, with Python's own separators. A run
or resume carries one A2A message with a text part per TEXT, or a file part for a TEXT
"@file:N" (N random bytes, base64, as a PDF the way Bindu's API keeps it: FilePart with
"file": {"bytes", "mimeType", "name"} and the "text" its validation requires). The tests use it so that what
binduq reads is what Python writes, not what binduq's own encoder would.
"""
import base64
import json
import os
import sys
import uuid


def part(text):
    if text.startswith("@file:"):
        data = base64.b64encode(os.urandom(int(text[6:]))).decode("ascii")
        return {"kind": "file", "file": {"bytes": data, "mimeType": "application/pdf",
                                         "name": "document.pdf"}, "text": ""}
    return {"kind": "text", "text": text}


def message(task_id, context_id, texts):
    return {
        "message_id": uuid.uuid4(),
        "context_id": context_id,
        "task_id": task_id,
        "kind": "message",
        "parts": [part(t) for t in texts],
        "role": "user",
        "metadata": {},
    }


def encode(argv):
    op, task_id = argv[1], uuid.UUID(argv[2])
    context_id = uuid.UUID(argv[3]) if len(argv) > 3 else uuid.uuid4()
    texts = argv[4:] or ["hello"]
    if op in ("run", "resume"):
        params = {"task_id": task_id, "context_id": context_id,
                  "message": message(task_id, context_id, texts)}
    else:
        params = {"task_id": task_id}
    return json.dumps({"operation": op, "params": params, "trace_id": None, "span_id": None},
                      default=str)


if __name__ == "__main__":
    if sys.argv[1:] == ["-"]:
        for line in sys.stdin:
            sys.stdout.write(encode([""] + line.rstrip("\n").split("\t")) + "\n")
    else:
        sys.stdout.write(encode(sys.argv))
