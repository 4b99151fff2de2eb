// beequeue.js -- bee-queue beside binduq: `node beequeue.js produce` queues PEER_N tasks
// (saveAll, 1,000 at a time); `node beequeue.js work` processes them with default options but
// concurrency and a no-op handler until PEER_N succeeded, then prints its report and exits.
'use strict';
const Queue = require('bee-queue');
const { settings, task, tally } = require('./common');

const redis = { host: settings.host, port: settings.port };

async function produce() {
  const q = new Queue(settings.queue, { redis, isWorker: false, getEvents: false });
  for (let b = 0; b < settings.n; b += 1000) {
    const jobs = [];
    for (let i = b + 1; i <= Math.min(settings.n, b + 1000); i++) jobs.push(q.createJob(task(i)));
    const errors = await q.saveAll(jobs);
    if (errors.size > 0) throw new Error(`${errors.size} jobs not saved`);
  }
  await q.close();
}

function work() {
  const q = new Queue(settings.queue, { redis, isWorker: true, getEvents: false });
  const t = tally(() => { q.close().then(() => process.exit(0)); });
  q.on('succeeded', () => t.finish());
  q.on('error', (e) => { console.error(e); process.exit(1); });
  q.process(settings.concurrency, async () => { t.start(); return true; });
}

if (process.argv[2] === 'produce') produce().catch((e) => { console.error(e); process.exit(1); });
else work();
