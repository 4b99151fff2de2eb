// common.js -- what the peer scripts share: the settings from the environment, the task
// (the same 300-byte operation binduq's bench queues), and the worker's report.
'use strict';
const { performance } = require('perf_hooks');

const env = (k, d) => (process.env[k] !== undefined && process.env[k] !== '' ? process.env[k] : d);
const settings = {
  host: '127.0.0.1',
  port: Number(env('PEER_PORT', '6379')),
  queue: env('PEER_QUEUE', 'peers'),
  n: Number(env('PEER_N', '20000')),
  prefix: env('PEER_PREFIX', 'p'),
  concurrency: Number(env('PEER_CONCURRENCY', '1')),
};

// The operation binduq's bench sends, as data: 300 bytes of JSON.
function task(i) {
  const t = { type: 'run', task_id: settings.prefix + i, conversation_id: 'c', messages: [''],
              timestamp: '2026-01-01T00:00:00.000Z' };
  t.messages[0] = 'x'.repeat(300 - JSON.stringify(t).length);
  return t;
}

// Counts handled tasks: the first start, the last completion, and the report line the
// driver reads ("n=<tasks> span=<seconds>").
function tally(onDone) {
  let n = 0, first = 0, last = 0, done = false;
  return {
    start() { if (!first) first = performance.now(); },
    finish() {
      n++;
      last = performance.now();
      if (n >= settings.n && !done) {
        done = true;
        console.log(`n=${n} span=${((last - first) / 1000).toFixed(6)}`);
        onDone();
      }
    },
  };
}

module.exports = { settings, task, tally };
