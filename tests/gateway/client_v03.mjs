// The A2A project's JavaScript SDK (@a2a-js/sdk 0.3.x, A2A 0.3: the method names Bindu uses)
// as a client of binduq's gateway, for tests/integration/gateway_spec.lua. Run from a folder
// where the SDK is installed: node client_v03.mjs <base url>. Prints one JSON object per
// line: {"step": name, ...what it saw}. Exits 1 on an unexpected throw.
import { A2AClient } from '@a2a-js/sdk/client';
import { randomUUID } from 'node:crypto';

const base = process.argv[2];
const out = (step, v) => console.log(JSON.stringify({ step, ...v }));
const text = (s) => ({ kind: 'message', messageId: randomUUID(), role: 'user', parts: [{ kind: 'text', text: s }] });

const client = await A2AClient.fromCardUrl(`${base}/.well-known/agent-card.json`);
out('card', {});

const r = await client.sendMessage({ message: text('hello'), configuration: { blocking: true, acceptedOutputModes: ['text/plain'] } });
const done = r.result;
const last = done.history[done.history.length - 1];
out('send', { state: done.status.state, kind: done.kind, answer: last.parts[0].text, role: last.role,
              artifact: done.artifacts[0].parts[0].text, id: done.id });

const got = (await client.getTask({ id: done.id, historyLength: 1 })).result;
out('get', { state: got.status.state, history: got.history.length });

const c1 = await client.cancelTask({ id: done.id });
out('cancel_done', { code: c1.error ? c1.error.code : null });

const unknown = await client.getTask({ id: 'no-such-task' });
out('get_unknown', { code: unknown.error ? unknown.error.code : null });

const slow = (await client.sendMessage({ message: text('slow 5') })).result;
out('send_nowait', { state: slow.status.state });
const canceled = (await client.cancelTask({ id: slow.id })).result;
out('cancel', { state: canceled.status.state });

const events = [];
for await (const ev of client.sendMessageStream({ message: text('slow 0.3') }))
  events.push(ev.kind + (ev.status ? ':' + ev.status.state : '') + (ev.final ? ':final' : ''));
out('stream', { events });

const ask = (await client.sendMessage({ message: text('weather'), configuration: { blocking: true } })).result;
out('ask', { state: ask.status.state });
const more = text('Lisbon');
more.taskId = ask.id;
more.contextId = ask.contextId;
const answered = (await client.sendMessage({ message: more, configuration: { blocking: true } })).result;
out('follow_up', { state: answered.status.state, same: answered.id === ask.id,
                   answer: answered.history[answered.history.length - 1].parts[0].text });

const bg = (await client.sendMessage({ message: text('slow 0.5') })).result;
const seen = [];
for await (const ev of client.resubscribeTask({ id: bg.id }))
  seen.push(ev.kind + (ev.status ? ':' + ev.status.state : '') + (ev.final ? ':final' : ''));
out('resubscribe', { events: seen });
