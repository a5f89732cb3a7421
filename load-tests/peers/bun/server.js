// A Bun pub/sub peer server: the yardstick `make bench-peers` measures the gateway against.
//
// What a competent user writes with Bun: `Bun.serve` with websocket handlers, one topic per
// symbol, `server.publish` once per update (uWebSockets queues it for every subscriber and
// writes each socket once per event-loop turn), and an in-process feed of the gateway's model:
// S symbols (named as the gateway's simulator names them), R updates/s in all, uniform
// activity, a batch every 1 ms, `seq` +1 per update per symbol, `ts` in ns since the epoch.
//
// It speaks the contract's messages with the gateway's bytes (field order, prices with the
// symbol's precision): `welcome` first, the `ack` of a subscribe, a `snapshot` per symbol,
// then `quote`s; `ping` gets `pong`. `GET /symbols` lists the symbols, so the load tester
// finds them as it does on the gateway.
//
// It must never grow the gateway's features (conflation, throttling, heartbeats, limits): it
// measures what the bare design costs. A socket past Bun's backpressure limit drops messages.
//
//   bun server.js --port 0 --symbols 500 --rate 2000     (or PEER_PORT, PEER_SYMBOLS, PEER_RATE)

// The gateway simulator's well-known instruments (feed-sim/src/lib.rs `KNOWN`), in rank order:
// name, opening price, decimals. Symbols past these are SYM0045, SYM0046, … with 2 decimals.
const KNOWN = [
  ["AAPL", 187.25, 2], ["MSFT", 415.1, 2], ["NVDA", 875.4, 2], ["AMZN", 178.9, 2],
  ["GOOGL", 152.3, 2], ["META", 492.65, 2], ["TSLA", 175.2, 2], ["BRK.B", 408.75, 2],
  ["JPM", 198.45, 2], ["V", 279.8, 2], ["UNH", 492.1, 2], ["XOM", 118.35, 2],
  ["JNJ", 152.6, 2], ["WMT", 60.15, 2], ["MA", 468.2, 2], ["PG", 162.4, 2],
  ["AVGO", 1318.5, 2], ["HD", 352.75, 2], ["CVX", 157.9, 2], ["MRK", 128.3, 2],
  ["ABBV", 178.45, 2], ["COST", 735.6, 2], ["PEP", 168.2, 2], ["KO", 60.05, 2],
  ["ADBE", 505.3, 2], ["CRM", 299.1, 2], ["NFLX", 627.45, 2], ["AMD", 162.8, 2],
  ["ORCL", 125.35, 2], ["INTC", 30.55, 2], ["CSCO", 48.2, 2], ["BAC", 37.85, 2],
  ["DIS", 112.4, 2], ["NKE", 92.15, 2], ["QCOM", 168.7, 2], ["IBM", 185.3, 2],
  ["GS", 455.2, 2], ["UBER", 70.35, 2], ["SPY", 520.85, 2], ["QQQ", 445.1, 2],
  ["EURUSD", 1.08512, 5], ["GBPUSD", 1.26403, 5], ["USDJPY", 151.482, 3],
  ["BTCUSD", 67250.5, 2], ["ETHUSD", 3480.25, 2],
];

// Announced in `welcome`, as the gateway's defaults; this server enforces none of them.
const LIMITS = '{"max_subscriptions":1000,"max_message_bytes":65536,"max_requests_per_sec":50}';
const HEARTBEAT_MS = 5000;
const MAX_PAYLOAD_BYTES = 65536;

function option(flag, env, fallback) {
  const i = process.argv.indexOf(flag);
  const raw = i >= 0 ? process.argv[i + 1] : process.env[env];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`bun-peer: ${flag} (${env}) must be a whole number, got ${raw}`);
    process.exit(2);
  }
  return n;
}

if (process.argv.includes("--help")) {
  console.log("usage: bun server.js [--host 127.0.0.1] [--port 9300] [--symbols 500] [--rate 2000]\n" +
    "  env: PEER_HOST, PEER_PORT (0: ephemeral), PEER_SYMBOLS (S), PEER_RATE (R, updates/s in all)");
  process.exit(0);
}
const hostIdx = process.argv.indexOf("--host");
const HOST = hostIdx >= 0 ? process.argv[hostIdx + 1] : (process.env.PEER_HOST ?? "127.0.0.1");
const PORT = option("--port", "PEER_PORT", 9300);
const S = Math.max(1, option("--symbols", "PEER_SYMBOLS", 500));
const R = Math.max(1, option("--rate", "PEER_RATE", 2000));

// Wall clock in ns since the epoch: the load tester measures quote age from `ts`.
const ORIGIN_NS = BigInt(Math.round(performance.timeOrigin * 1e6));
const nowNs = () => ORIGIN_NS + BigInt(Math.round(performance.now() * 1e6));

// The market: one entry per symbol, prices as integer units of 10^-precision.
const rand = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1)); // inclusive
const names = [];
const ids = new Map();
const market = [];
for (let i = 0; i < S; i++) {
  const [name, price, precision] = KNOWN[i] ?? [`SYM${String(i).padStart(4, "0")}`, 5 + Math.random() * 495, 2];
  const scale = 10 ** precision;
  const units = Math.round(price * scale);
  const spread = rand(1, 3);
  names.push(name);
  ids.set(name, i);
  market.push({
    name, precision, scale, bid: units, spread,
    bidSize: 100 * rand(1, 50), askSize: 100 * rand(1, 50),
    last: units, lastSize: 100, volume: 0, seq: 1, ts: nowNs(),
    // The fields after `type`, as the gateway writes them: rebuilt once per update.
    body: "",
  });
}

function price(m, units) {
  if (m.precision === 0) return String(units);
  const whole = Math.floor(units / m.scale);
  return `${whole}.${String(units - whole * m.scale).padStart(m.precision, "0")}`;
}

function encode(m) {
  m.body = `"symbol":"${m.name}","seq":${m.seq},"bid":${price(m, m.bid)},"ask":${price(m, m.bid + m.spread)}` +
    `,"bid_size":${m.bidSize},"ask_size":${m.askSize},"last":${price(m, m.last)},"last_size":${m.lastSize}` +
    `,"volume":${m.volume},"ts":${m.ts}}`;
}
market.forEach(encode);

// One update of symbol i: the gateway simulator's random walk.
function step(m, ts) {
  m.bid = Math.max(1, m.bid + rand(-2, 2));
  if (Math.random() < 0.1) m.spread = rand(1, 3);
  m.seq += 1;
  m.ts = ts;
  m.bidSize = 100 * rand(1, 50);
  m.askSize = 100 * rand(1, 50);
  if (Math.random() < 0.5) {
    m.last = Math.random() < 0.5 ? m.bid : m.bid + m.spread;
    m.lastSize = rand(1, 20) * 50;
    m.volume += m.lastSize;
  }
  encode(m);
}

const idJson = (id) => (id === undefined ? "" : `,"id":${JSON.stringify(id)}`);
const symbolsJson = (list) => JSON.stringify(list.map((i) => names[i]));
let sessions = 0;

const server = Bun.serve({
  hostname: HOST,
  port: PORT,
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === "/ws") {
      if (server.upgrade(req, { data: { id: (++sessions).toString(16) } })) return undefined;
      return new Response("Upgrade Required", { status: 426 });
    }
    if (path === "/symbols") return Response.json(names);
    return new Response("Not Found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: MAX_PAYLOAD_BYTES,
    open(ws) {
      ws.send(`{"type":"welcome","protocol":1,"server":"bun-peer","session":"${ws.data.id}","epoch":"bun-peer","ts":${nowNs()}` +
        `,"heartbeat_ms":${HEARTBEAT_MS},"limits":${LIMITS}}`);
    },
    message(ws, text) {
      let req;
      try {
        req = JSON.parse(text);
      } catch {
        ws.send('{"type":"error","code":"bad_request","message":"not JSON"}');
        return;
      }
      const list = req.symbols?.length === 1 && req.symbols[0] === "*"
        ? names.map((_, i) => i)
        : (Array.isArray(req.symbols) ? req.symbols : []).map((s) => ids.get(s)).filter((i) => i !== undefined);
      if (req.op === "subscribe") {
        // The ack, then each snapshot, then (from the next feed batch on) the quotes.
        ws.send(`{"type":"ack"${idJson(req.id)},"op":"subscribe","symbols":${symbolsJson(list)}}`);
        for (const i of list) {
          ws.subscribe(names[i]);
          if (req.snapshot !== false) ws.send(`{"type":"snapshot",${market[i].body}`);
        }
      } else if (req.op === "unsubscribe") {
        for (const i of list) ws.unsubscribe(names[i]);
        ws.send(`{"type":"ack"${idJson(req.id)},"op":"unsubscribe","symbols":${symbolsJson(list)}}`);
      } else if (req.op === "ping") {
        ws.send(`{"type":"pong"${idJson(req.id)},"ts":${nowNs()}}`);
      } else {
        ws.send(`{"type":"error"${idJson(req.id)},"code":"bad_request","message":"unknown op"}`);
      }
    },
  },
});

// The feed: every millisecond, the updates due at R since the start, each published once.
// After a stall, at most 100 ms of updates are caught up, as the gateway's feed does.
const MAX_CATCH_UP = Math.ceil(R / 10);
const started = performance.now();
let sent = 0;
setInterval(() => {
  const due = Math.floor(((performance.now() - started) * R) / 1000);
  if (due <= sent) return;
  if (due - sent > MAX_CATCH_UP) sent = due - MAX_CATCH_UP;
  const ts = nowNs();
  for (; sent < due; sent++) {
    const m = market[Math.floor(Math.random() * S)];
    step(m, ts);
    server.publish(m.name, `{"type":"quote",${m.body}`);
  }
}, 1);

console.log(`bun-peer: serving on http://${HOST}:${server.port}/ (WebSocket: ws://${HOST}:${server.port}/ws), ` +
  `${S} symbols, ${R} updates/s, Bun ${Bun.version}`);
