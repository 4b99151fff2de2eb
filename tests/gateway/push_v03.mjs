// Push notification configs through the A2A project's JavaScript SDK 0.3.x (A2A 0.3, the
// tasks/pushNotificationConfig/* methods), for tests/integration/gateway_spec.lua:
// node push_v03.mjs <base url> <receiver url>. Prints one JSON object per line.
import { A2AClient } from '@a2a-js/sdk/client';
import { randomUUID } from 'node:crypto';

const [base, recv] = process.argv.slice(2);
const out = (step, v) => console.log(JSON.stringify({ step, ...v }));
const text = (s) => ({ kind: 'message', messageId: randomUUID(), role: 'user', parts: [{ kind: 'text', text: s }] });
const client = await A2AClient.fromCardUrl(`${base}/.well-known/agent-card.json`);

const task = (await client.sendMessage({ message: text('slow 1.5') })).result;
const set = await client.setTaskPushNotificationConfig({ taskId: task.id,
  pushNotificationConfig: { url: recv + '/v03/a', token: 'tok-v03' } });
out('set', { taskId: set.result.taskId, id: set.result.pushNotificationConfig.id, url: set.result.pushNotificationConfig.url });
await client.setTaskPushNotificationConfig({ taskId: task.id,
  pushNotificationConfig: { id: 'other', url: recv + '/v03/other', token: 'tok-other' } });
const got = await client.getTaskPushNotificationConfig({ id: task.id });
out('get', { id: got.result.pushNotificationConfig.id, token: got.result.pushNotificationConfig.token });
const del = await client.deleteTaskPushNotificationConfig({ id: task.id, pushNotificationConfigId: 'other' });
out('delete', { error: del.error ? del.error.code : null, result: del.result === undefined ? 'undefined' : del.result });
const listed = await client.listTaskPushNotificationConfig({ id: task.id });
out('list', { ids: listed.result.map((c) => c.pushNotificationConfig.id) });
const bad = await client.setTaskPushNotificationConfig({ taskId: task.id, pushNotificationConfig: { url: 'ftp://x/y' } });
out('bad_url', { code: bad.error ? bad.error.code : null });

// A config given with the message (blocking).
const inline = (await client.sendMessage({ message: text('hello'),
  configuration: { blocking: true, pushNotificationConfig: { url: recv + '/v03/inline', token: 'tok-inline03' } } })).result;
out('inline', { id: inline.id, state: inline.status.state });

let last = task;
for (let i = 0; i < 100 && !['completed', 'failed'].includes(last.status.state); i++) {
  await new Promise((r) => setTimeout(r, 100));
  last = (await client.getTask({ id: task.id })).result;
}
out('task', { id: task.id, state: last.status.state });
