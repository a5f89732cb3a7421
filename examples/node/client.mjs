#!/usr/bin/env node
// A robust client of the market data gateway in Node.js (the `ws` package: Node 20 has no global
// WebSocket). It reconnects with exponential backoff and jitter and resumes: it keeps the `epoch`
// of its last session and the last `seq` of each symbol, and subscribes again with `resume`, so
// the gateway replays what it missed instead of sending snapshots (symbols it cannot replay, after
// a feed restart or a long outage, get a snapshot). It tracks `seq` per symbol: a gap is
// conflation (the gateway merged updates into a later quote because of a throttle or a slow
// reader), not an error; a quote stamped before its session opened is marked `replayed`.
//
//   node examples/node/client.mjs AAPL MSFT NVDA --url ws://127.0.0.1:8080/ws --max-seconds 30
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string', default: 'ws://127.0.0.1:8080/ws' },
    token: { type: 'string' }, // sent as `Authorization: Bearer TOKEN`
    'throttle-ms': { type: 'string', default: '0' },
    'max-messages': { type: 'string', default: '0' }, // stop after this many messages (0: never)
    'max-seconds': { type: 'string', default: '0' }, // stop after this many seconds (0: never)
  },
});
const symbols = positionals.length ? positionals : ['AAPL', 'MSFT', 'NVDA'];
const [BACKOFF_BASE_MS, BACKOFF_MAX_MS] = [500, 15000];
const seq = new Map(); // the last seq held per symbol, kept across sessions
let epoch = null; // welcome.epoch of the last session: the sequence space of `seq`
let sessionTs = 0; // welcome.ts: quotes stamped earlier were missed, and are replayed
let [messages, gaps, conflated, sessions, attempt, resumedTotal, snapshottedTotal] = [0, 0, 0, 0, 0, 0, 0];
let ws = null;
let stopping = false;

function connect() {
  const headers = opt.token ? { Authorization: `Bearer ${opt.token}` } : {};
  ws = new WebSocket(opt.url, { headers, handshakeTimeout: 10000 });
  ws.on('message', (data) => onMessage(JSON.parse(data.toString())));
  ws.on('unexpected-response', (_req, res) => {
    console.log(`handshake refused: HTTP ${res.statusCode}`);
    if (res.statusCode === 401 || res.statusCode === 403) stop(2); // retrying cannot fix these
    else ws.terminate();
  });
  ws.on('error', (err) => console.log(`connection error: ${err.message}`)); // 'close' follows
  ws.on('close', (code, reason) => {
    if (stopping) return;
    console.log(`disconnected: code=${code} reason=${reason.toString() || '-'}`);
    // Wait half the ceiling for sure and a random half more, so clients do not come back in lockstep.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    attempt += 1;
    console.log(`reconnecting in ${(delay / 1000).toFixed(2)} s (attempt ${attempt})`);
    setTimeout(connect, delay);
  });
}

function onMessage(m) {
  messages += 1;
  if (m.type === 'welcome') {
    attempt = 0; // the link works again: the next outage starts from the base delay
    sessions += 1;
    console.log(`welcome server=${m.server} session=${m.session} epoch=${m.epoch} heartbeat_ms=${m.heartbeat_ms}`);
    const request = { op: 'subscribe', id: 1, symbols, snapshot: true, throttle_ms: Number(opt['throttle-ms']) };
    // Resume in the old session's epoch; the gateway compares it with its own.
    const held = [...seq].filter(([s]) => symbols.includes(s) || symbols[0] === '*');
    if (epoch !== null && held.length > 0) {
      const limit = (m.limits && m.limits.max_subscriptions) || held.length;
      request.resume = { epoch, seq: Object.fromEntries(held.slice(0, limit)) };
    }
    [epoch, sessionTs] = [m.epoch, m.ts];
    ws.send(JSON.stringify(request));
  } else if (m.type === 'snapshot' || m.type === 'quote') {
    const last = seq.get(m.symbol);
    let note = '';
    if (m.type === 'quote' && last !== undefined && m.seq > last + 1) {
      gaps += 1;
      conflated += m.seq - last - 1;
      note = ` conflated=${m.seq - last - 1}`;
    } else if (m.type === 'quote' && last !== undefined && m.seq <= last) {
      note = ` OUT-OF-ORDER after ${last}`;
    }
    if (m.type === 'quote' && m.ts < sessionTs) note += ' replayed';
    seq.set(m.symbol, m.seq); // a snapshot restarts tracking: a restarted feed may number anew
    console.log(`${m.type} ${m.symbol} seq=${m.seq} bid=${m.bid} ask=${m.ask} last=${m.last} volume=${m.volume}${note}`);
  } else {
    const { type, ...rest } = m; // ack, error, heartbeat, pong
    console.log(type, ...Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`));
    if (type === 'ack' && Array.isArray(m.resumed)) { // the answer to a subscribe with `resume`
      const resumed = new Set(m.resumed);
      const named = m.symbols.filter((s) => s !== '*');
      const snapshotted = (named.length ? named : [...seq.keys()]).filter((s) => !resumed.has(s));
      resumedTotal += resumed.size;
      snapshottedTotal += snapshotted.length;
      console.log(`resume: ${resumed.size} resumed (${m.resumed.join(',')}), ${snapshotted.length} snapshotted (${snapshotted.join(',')})`);
    }
  }
  if (messages === Number(opt['max-messages'])) stop(0);
}

function stop(code) {
  if (stopping) return;
  stopping = true;
  console.log(`done: ${messages} messages, ${gaps} seq gaps (${conflated} updates conflated), ${Math.max(0, sessions - 1)} reconnects` +
    ` (${resumedTotal} symbols resumed, ${snapshottedTotal} snapshotted)`);
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.removeAllListeners('message');
    ws.on('close', () => process.exit(code)); // let the close handshake finish, briefly
    ws.close(1000);
    setTimeout(() => process.exit(code), 1000);
  } else process.exit(code);
}

process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));
if (Number(opt['max-seconds']) > 0) setTimeout(() => stop(0), Number(opt['max-seconds']) * 1000);
connect();
