// bullmq.js -- BullMQ beside binduq: `node bullmq.js produce` queues PEER_N tasks (addBulk,
// 1,000 at a time); `node bullmq.js work` runs one Worker (default options but concurrency)
// with a no-op processor until it has completed PEER_N, then prints its report and exits.
// `node bullmq.js agents`: the same Worker, its processor an HTTP call to PEER_MODEL (the fake
// model server's chat completion, the request binduq's agents handler makes: a POST of the
// same JSON, the stream read to its end) on Node's http with a keep-alive Agent of
// PEER_CONCURRENCY sockets; it also prints the worker's CPU from its creation (utime+stime)
// and its peak RSS (VmHWM).
'use strict';
const { Queue, Worker } = require('bullmq');
const { settings, task, tally } = require('./common');

const connection = { host: settings.host, port: settings.port, maxRetriesPerRequest: null };

async function produce() {
  const q = new Queue(settings.queue, { connection });
  for (let b = 0; b < settings.n; b += 1000) {
    const jobs = [];
    for (let i = b + 1; i <= Math.min(settings.n, b + 1000); i++) jobs.push({ name: 'run', data: task(i) });
    await q.addBulk(jobs);
  }
  await q.close();
}

function work() {
  let w;
  const t = tally(() => { w.close().then(() => process.exit(0)); });
  w = new Worker(settings.queue, async () => { t.start(); return true; },
                 { connection, concurrency: settings.concurrency });
  w.on('completed', () => t.finish());
  w.on('error', (e) => { console.error(e); process.exit(1); });
}

function agents() {
  const http = require('http');
  const fs = require('fs');
  const model = new URL(process.env.PEER_MODEL);
  const agent = new http.Agent({ keepAlive: true, maxSockets: settings.concurrency,
                                 maxFreeSockets: settings.concurrency });
  const body = JSON.stringify({ model: 'fake', stream: true, messages: [{ role: 'user', content: 'hi' }] });
  const call = (id) => new Promise((resolve, reject) => {
    const req = http.request({
      agent, host: model.hostname, port: model.port, path: model.pathname + model.search, method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'X-Request-Id': id },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => {
        if (res.statusCode === 200 && text.includes('[DONE]')) resolve(true);
        else reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
  const cpu0 = process.cpuUsage();
  let w;
  const t = tally(() => {
    const cpu = process.cpuUsage(cpu0);
    const hwm = fs.readFileSync('/proc/self/status', 'utf8').match(/VmHWM:\s*(\d+)/)[1];
    console.log(`cpu_s=${((cpu.user + cpu.system) / 1e6).toFixed(3)} hwm_kb=${hwm}`);
    w.close().then(() => process.exit(0));
  });
  w = new Worker(settings.queue, async (job) => { t.start(); return call(job.data.task_id); },
                 { connection, concurrency: settings.concurrency });
  w.on('completed', () => t.finish());
  w.on('failed', (job, e) => { console.error(`job ${job && job.id} failed: ${e}`); process.exit(1); });
  w.on('error', (e) => { console.error(e); process.exit(1); });
}

if (process.argv[2] === 'produce') produce().catch((e) => { console.error(e); process.exit(1); });
else if (process.argv[2] === 'agents') agents();
else work();
