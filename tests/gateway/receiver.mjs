// A webhook receiver for the gateway's push notifications (tests/integration/gateway_spec.lua):
// node receiver.mjs <log file> listens on 127.0.0.1 (a free port, printed as "port=N" on the
// first line of stdout) and appends one JSON line per POST to the log file: its path, the
// token and authorization headers, the content type and the body. A path /fail/N/... answers
// 503 to its first N requests (counted per path), so the sender's retries can be seen.
// Exits after 120 s at most.
import { createServer } from 'node:http';
import { appendFileSync } from 'node:fs';

const file = process.argv[2];
const seen = new Map();
const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; if (body.length > 1 << 20) req.destroy(); });
  req.on('end', () => {
    const n = (seen.get(req.url) || 0) + 1;
    seen.set(req.url, n);
    const m = req.url.match(/^\/fail\/(\d+)\//);
    const fail = m && n <= Number(m[1]);
    appendFileSync(file, JSON.stringify({
      path: req.url, method: req.method, n, failed: !!fail,
      token: req.headers['x-a2a-notification-token'] || null,
      authorization: req.headers['authorization'] || null,
      type: req.headers['content-type'] || null, body,
    }) + '\n');
    res.writeHead(fail ? 503 : 200, { 'Content-Type': 'text/plain' });
    res.end(fail ? 'not now' : 'ok');
  });
});
server.listen(0, '127.0.0.1', () => console.log('port=' + server.address().port));
setTimeout(() => process.exit(0), 120000).unref();
