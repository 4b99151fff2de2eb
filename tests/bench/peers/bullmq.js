// bullmq.js -- BullMQ beside binduq: `node bullmq.js produce` queues PEER_N tasks (addBulk,
// 1,000 at a time); `node bullmq.js work` runs one Worker (default options but concurrency)
// with a no-op processor until it has completed PEER_N, then prints its report and exits.
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

if (process.argv[2] === 'produce') produce().catch((e) => { console.error(e); process.exit(1); });
else work();
