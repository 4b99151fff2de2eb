// The A2A project's JavaScript SDK (@a2a-js/sdk 1.x, A2A 1.0) as a client of binduq's
// gateway, for tests/integration/gateway_spec.lua. Run from a folder where the SDK is
// installed: node client_v1.mjs <base url> [token]. Prints one JSON object per line:
// {"step": name, ...what it saw}; the spec asserts on them. Exits 1 on an unexpected throw.
import { ClientFactory, ClientFactoryOptions, JsonRpcTransportFactory } from '@a2a-js/sdk/client';
import { Role, TaskState } from '@a2a-js/sdk';
import { randomUUID } from 'node:crypto';

const base = process.argv[2];
const token = process.argv[3];
const out = (step, v) => console.log(JSON.stringify({ step, ...v }));
const text = (s) => ({ messageId: randomUUID(), role: Role.ROLE_USER, parts: [{ content: { $case: 'text', value: s } }] });
const state = (t) => TaskState[t.status.state];
const partText = (p) => (p && p.content && p.content.$case === 'text') ? p.content.value : null;

let factory = new ClientFactory();
if (token) {
  // Every call carries the bearer token.
  const auth = async (input, init = {}) => {
    const headers = new Headers(init.headers || {});
    headers.set('Authorization', 'Bearer ' + token);
    return fetch(input, { ...init, headers });
  };
  factory = new ClientFactory(ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
    transports: [new JsonRpcTransportFactory({ fetchImpl: auth })] }));
}
const client = await factory.createFromUrl(base);
out('card', { protocolVersion: client.protocolVersion });

// A blocking send (1.0's default): the task comes back completed, with the answer.
const done = await client.sendMessage({ message: text('hello') });
const last = done.history[done.history.length - 1];
out('send', { state: state(done), answer: partText(last.parts[0]), role: Role[last.role],
              artifact: partText(done.artifacts[0].parts[0]), id: done.id });

const got = await client.getTask({ id: done.id, historyLength: 1 });
out('get', { state: state(got), history: got.history.length });

try { await client.cancelTask({ id: done.id }); out('cancel_done', { threw: false }); }
catch (e) { out('cancel_done', { threw: true, error: e.constructor.name }); }

try { await client.getTask({ id: 'no-such-task' }); out('get_unknown', { threw: false }); }
catch (e) { out('get_unknown', { threw: true, error: e.constructor.name }); }

// Not blocking: submitted at once; then canceled while it runs.
const slow = await client.sendMessage({ message: text('slow 5'), configuration: { returnImmediately: true } });
out('send_nowait', { state: state(slow) });
const canceled = await client.cancelTask({ id: slow.id });
out('cancel', { state: state(canceled) });

// A stream: the task, its artifact, its final status.
const events = [];
for await (const ev of client.sendMessageStream({ message: text('slow 0.3') })) {
  const v = ev.payload.value;
  events.push(ev.payload.$case + (v.status ? ':' + TaskState[v.status.state] : ''));
}
out('stream', { events });

// A follow-up: the task asks for input, the next message on it continues it.
const ask = await client.sendMessage({ message: text('weather') });
out('ask', { state: state(ask) });
const more = text('Lisbon');
more.taskId = ask.id;
more.contextId = ask.contextId;
const answered = await client.sendMessage({ message: more });
out('follow_up', { state: state(answered), same: answered.id === ask.id,
                   answer: partText(answered.history[answered.history.length - 1].parts[0]) });

// Resubscribe to a running task.
const bg = await client.sendMessage({ message: text('slow 0.5'), configuration: { returnImmediately: true } });
const seen = [];
for await (const ev of client.resubscribeTask({ id: bg.id })) {
  const v = ev.payload.value;
  seen.push(ev.payload.$case + (v.status ? ':' + TaskState[v.status.state] : ''));
}
out('resubscribe', { events: seen });
