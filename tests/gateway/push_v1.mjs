// Push notification configs through the A2A project's JavaScript SDK 1.x (A2A 1.0), for
// tests/integration/gateway_spec.lua: node push_v1.mjs <base url> <receiver url>. Prints one
// JSON object per line, {"step": name, ...}. Exits 1 on an unexpected throw.
import { ClientFactory } from '@a2a-js/sdk/client';
import { Role, TaskState } from '@a2a-js/sdk';
import { randomUUID } from 'node:crypto';

const [base, recv] = process.argv.slice(2);
const out = (step, v) => console.log(JSON.stringify({ step, ...v }));
const text = (s) => ({ messageId: randomUUID(), role: Role.ROLE_USER, parts: [{ content: { $case: 'text', value: s } }] });
const state = (t) => TaskState[t.status.state];
const client = await new ClientFactory().createFromUrl(base);

// A task that runs for a while; its configs are set while it runs.
const task = await client.sendMessage({ message: text('slow 1.5'), configuration: { returnImmediately: true } });
const created = await client.createTaskPushNotificationConfig({
  taskId: task.id, id: 'cfg-1', url: recv + '/v1/a', token: 'tok-v1',
  authentication: { scheme: 'Bearer', credentials: 'cred-v1' } });
out('create', { id: created.id, taskId: created.taskId, url: created.url, token: created.token,
                scheme: created.authentication && created.authentication.scheme, same: created.taskId === task.id });
await client.createTaskPushNotificationConfig({ taskId: task.id, id: 'cfg-retry', url: recv + '/fail/2/v1', token: 'tok-retry' });
await client.createTaskPushNotificationConfig({ taskId: task.id, id: 'cfg-gone', url: recv + '/v1/gone' });
const got = await client.getTaskPushNotificationConfig({ taskId: task.id, id: 'cfg-1' });
out('get', { id: got.id, url: got.url, token: got.token });
await client.deleteTaskPushNotificationConfig({ taskId: task.id, id: 'cfg-gone' });
const listed = await client.listTaskPushNotificationConfig({ taskId: task.id });
out('list', { ids: listed.configs.map((c) => c.id) });
try { await client.getTaskPushNotificationConfig({ taskId: task.id, id: 'cfg-gone' }); out('get_deleted', { threw: false }); }
catch (e) { out('get_deleted', { threw: true, error: e.constructor.name }); }
try { await client.createTaskPushNotificationConfig({ taskId: task.id, id: 'bad', url: 'file:///etc/passwd' }); out('bad_url', { threw: false }); }
catch (e) { out('bad_url', { threw: true, error: e.constructor.name }); }
try { await client.createTaskPushNotificationConfig({ taskId: 'no-such-task', url: recv + '/x' }); out('no_task', { threw: false }); }
catch (e) { out('no_task', { threw: true, error: e.constructor.name }); }

// A config given with the message itself (blocking send).
const inline = await client.sendMessage({ message: text('hello'),
  configuration: { taskPushNotificationConfig: { url: recv + '/v1/inline', token: 'tok-inline' } } });
out('inline', { id: inline.id, state: state(inline) });

// Waits for the first task to end.
let last = task;
for (let i = 0; i < 100 && !['TASK_STATE_COMPLETED', 'TASK_STATE_FAILED'].includes(state(last)); i++) {
  await new Promise((r) => setTimeout(r, 100));
  last = await client.getTask({ id: task.id });
}
out('task', { id: task.id, state: state(last) });
