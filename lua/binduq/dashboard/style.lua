-- The dashboard's stylesheet (binduq.dashboard): light and dark by the system's choice, one
-- column on a phone, tables that scroll sideways rather than break the layout.
return [==[
:root { --bg: #fbfbfc; --fg: #1b1d21; --mute: #5f6672; --line: #d9dce1; --card: #fff;
  --accent: #2457c5; --bad: #b3261e; --ok: #1e7a3c; --warn: #8a5a00; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15171a; --fg: #e6e8eb; --mute: #9aa1ab; --line: #30343a; --card: #1d2024;
    --accent: #7ea6ff; --bad: #ff8a80; --ok: #7bd88f; --warn: #f0c060; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem 1rem; padding: .6rem 1rem;
  border-bottom: 1px solid var(--line); background: var(--card); position: sticky; top: 0; z-index: 1; }
.brand { font-weight: 700; }
nav { display: flex; flex-wrap: wrap; gap: .25rem; }
nav a { padding: .3rem .6rem; border-radius: 4px; color: var(--fg); text-decoration: none; }
nav a.on { background: var(--accent); color: var(--bg); }
.live { margin-left: auto; font-size: 12px; color: var(--mute); }
.live.on::before { content: "\25CF  "; color: var(--ok); }
.live.bad { color: var(--bad); }
main { padding: 1rem; max-width: 1400px; margin: 0 auto; }
footer { padding: 1rem; color: var(--mute); font-size: 12px; text-align: center; }
h1 { font-size: 1.2rem; margin: .2rem 0 .8rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 .5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .6rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; }
.card .n { font-size: 1.5rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .l { color: var(--mute); font-size: 12px; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; background: var(--card); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--mute); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
td.id, td.wrap { max-width: 28rem; overflow-wrap: anywhere; word-break: break-word; }
tr:last-child td { border-bottom: 0; }
.muted { color: var(--mute); }
.bad { color: var(--bad); }
.ok { color: var(--ok); }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; margin-bottom: .8rem; }
label { display: flex; flex-direction: column; font-size: 12px; color: var(--mute); gap: .15rem; }
input, select, button { font: inherit; color: var(--fg); background: var(--card); border: 1px solid var(--line);
  border-radius: 4px; padding: .35rem .5rem; min-height: 2rem; }
button { cursor: pointer; }
button.primary { background: var(--accent); color: var(--bg); border-color: var(--accent); }
button.danger { color: var(--bad); border-color: var(--bad); }
button:disabled { opacity: .5; cursor: default; }
.actions { display: flex; flex-wrap: wrap; gap: .4rem; margin: .6rem 0; }
pre { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .6rem;
  white-space: pre-wrap; overflow-wrap: anywhere; max-height: 28rem; overflow: auto; margin: 0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
dl.kv dt { color: var(--mute); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
#toast { position: fixed; bottom: 1rem; left: 50%; transform: translateX(-50%); max-width: 90vw;
  background: var(--fg); color: var(--bg); padding: .5rem .9rem; border-radius: 6px; display: none; }
#toast.show { display: block; }
dialog { border: 1px solid var(--line); border-radius: 8px; background: var(--card); color: var(--fg);
  max-width: min(32rem, 92vw); }
dialog::backdrop { background: rgba(0, 0, 0, .4); }
figure.chart { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .5rem; }
figure.chart svg { width: 100%; height: 140px; display: block; }
figure.chart figcaption { font-size: 12px; margin-top: .3rem; }
.bar-ok { fill: var(--ok); }
.bar-bad { fill: var(--bad); }
.axis { stroke: var(--line); stroke-width: 1; }
@media (max-width: 640px) {
  main { padding: .6rem; }
  .hide-sm { display: none; }
  .card .n { font-size: 1.2rem; }
}
]==]
