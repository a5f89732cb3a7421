// The dashboard page (`GET /`) in a real headless Chromium, against the real gateway.
//
// Walks through what a user does: open the page for the first time and see the ten most active
// symbols live without a click, pick three symbols with the search box, watch prices move, switch
// the throttle to 1 s and see the message rate drop, lose the gateway (SIGTERM) and see the page
// say so, get it back on the same port (a new feed epoch: the resume is answered with snapshots),
// reload and find the watchlist kept, freeze the gateway (SIGSTOP) and see the page resume without
// a snapshot. Then the network, not the gateway, fails: through a TCP proxy on loopback the page's
// connection is cut while the gateway keeps publishing, and the page resumes with every missed seq
// once, in order (read from the WebSocket frames Chromium received). Server-Sent Events: with
// `?transport=sse` (a real EventSource; a watchlist change opens a new stream that resumes), and
// through a proxy that refuses WebSocket upgrades, where the page falls back to SSE by itself and
// resumes across a cut of the stream. Screenshots land in
// target/test-artifacts/ for a human to look at; with UPDATE_DOCS_SCREENSHOT=1 the final one is
// also copied to docs/dashboard.png (the README's picture).
//
// Uses the system Chromium (/usr/bin/chromium, or $CHROMIUM) through playwright-core: it never
// downloads a browser. Every wait is bounded; the gateway and the browser are always stopped.
// Run: cd gateway/tests/browser && npm install && GATEWAY_BIN=/abs/path/to/gateway node browser.test.mjs
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const GATEWAY_BIN = process.env.GATEWAY_BIN || path.join(ROOT, 'target/debug/gateway');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'target/test-artifacts');
const WHOLE_RUN_TIMEOUT_MS = 300_000;
const SERVING_RE = /http:\/\/([0-9.]+):([0-9]+)\//;
// A short heartbeat, so that the frozen-gateway step sees the page's watchdog act within seconds.
// A 15 s history (default 5 s): the frozen gateway's last updates before SIGSTOP are 4–5 s old
// when the page reconnects, and must still be held for the resume that step pins.
const GATEWAY_ARGS = ['--heartbeat-ms', '1000', '--history-ms', '15000'];
// How long the proxy refuses connections after a cut: the gateway publishes meanwhile, and the
// page must get all of it replayed (well inside the gateway's history).
const CUT_MS = 1500;
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

fs.mkdirSync(ARTIFACTS, { recursive: true });
const gatewayLog = fs.createWriteStream(path.join(ARTIFACTS, 'browser-gateway.log'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(...a);

// ---- the gateway process and the browser ------------------------------------------------------
let gateway = null; // { child, port, exited: Promise }
let context = null;
let page = null;
let profileDir = null;

const others = []; // gateways other than `gateway`, each stopped by the step that started it
function startGateway(port, extraArgs = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(GATEWAY_BIN, ['--listen', `127.0.0.1:${port}`, ...GATEWAY_ARGS, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
    others.push(child);
    const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('gateway did not print its serving line within 20 s')); }, 20_000);
    child.stderr.pipe(gatewayLog, { end: false });
    child.stdout.on('data', (chunk) => {
      gatewayLog.write(chunk);
      out += chunk;
      const m = SERVING_RE.exec(out);
      if (m && out.includes('\n')) {
        clearTimeout(timer);
        child.stdout.removeAllListeners('data');
        child.stdout.resume();
        resolve({ child, port: Number(m[2]), exited });
      }
    });
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`gateway exited early (code ${code}, signal ${signal})`)); });
  });
}

// Restarting on the same port right after a stop can race the kernel releasing it: retry briefly.
async function startGatewayOn(port) {
  let lastErr;
  for (let i = 0; i < 10; i++) {
    try { return await startGateway(port); } catch (e) { lastErr = e; await sleep(500); }
  }
  throw lastErr;
}

async function stopGateway(signal = 'SIGTERM') {
  if (!gateway) return;
  const g = gateway;
  gateway = null;
  g.child.kill(signal);
  const done = await Promise.race([g.exited, sleep(10_000).then(() => null)]);
  if (!done) { g.child.kill('SIGKILL'); await g.exited; }
}

process.on('exit', () => {
  for (const child of others) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});
// Stopped from outside (Ctrl-C, a CI timeout): still stop the gateway we started. Playwright
// closes the browser it launched on its own exit handlers.
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { log(`stopped by ${sig}`); process.exit(130); });

// ---- a TCP proxy on loopback: the network between the browser and the gateway -----------------
// `cut(ms)` breaks every connection through it (as a dropped Wi-Fi or a restarted NAT would) and
// refuses new ones for `ms`; with `blockWebSocket` it answers every WebSocket upgrade with 403, as
// a corporate proxy that only passes plain HTTP does. Everything else is passed through untouched.
const proxies = [];
class TcpProxy {
  constructor(targetPort, { blockWebSocket = false } = {}) {
    this.targetPort = targetPort;
    this.blockWebSocket = blockWebSocket;
    this.sockets = new Set();
    this.refusing = false;
    this.upgradesRefused = 0;
    proxies.push(this);
  }

  start() {
    return new Promise((resolve, reject) => {
      this.server = net.createServer((client) => this.accept(client));
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => { this.port = this.server.address().port; resolve(this); });
    });
  }

  accept(client) {
    client.on('error', () => {});
    if (this.refusing) { client.destroy(); return; }
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    upstream.on('error', () => {});
    this.sockets.add(client);
    this.sockets.add(upstream);
    const forget = () => {
      this.sockets.delete(client);
      this.sockets.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', forget);
    upstream.on('close', forget);
    upstream.pipe(client);
    client.on('data', (chunk) => {
      if (this.blockWebSocket && /\r\nupgrade:[ \t]*websocket/i.test(chunk.toString('latin1'))) {
        this.upgradesRefused += 1;
        upstream.removeListener('close', forget);
        upstream.destroy();
        this.sockets.delete(upstream);
        client.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\nWebSocket is not allowed.\n');
        return;
      }
      upstream.write(chunk);
    });
  }

  cut(refuseMs) {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (refuseMs > 0) {
      this.refusing = true;
      setTimeout(() => { this.refusing = false; }, refuseMs);
    }
  }

  close() {
    this.cut(0);
    return new Promise((r) => this.server.close(() => r()));
  }
}

// ---- a tiny step runner: steps build on each other, so the first failure skips the rest --------
const results = { passed: 0, failed: 0, skipped: 0 };
let broken = false;
async function step(name, fn) {
  if (broken) { results.skipped += 1; log(`SKIP ${name}`); return; }
  const t0 = Date.now();
  try {
    await fn();
    results.passed += 1;
    log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.failed += 1;
    broken = true;
    log(`FAIL ${name}\n     ${String(e && e.stack || e).split('\n').slice(0, 4).join('\n     ')}`);
    if (page) await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-failure.png') }).catch(() => {});
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

// ---- helpers reading the page as a user sees it -----------------------------------------------
const pageErrors = [];

const connState = () => page.locator('#conn-state').getAttribute('data-state');
async function waitConnState(states, timeout) {
  await page.waitForFunction((s) => s.includes(document.getElementById('conn-state').dataset.state), states, { timeout });
}
async function rowInfo(sym) {
  return page.evaluate((s) => {
    const tr = document.querySelector(`tr[data-symbol="${s}"]`);
    if (!tr) return null;
    const cell = (f) => tr.querySelector(`[data-field="${f}"]`).textContent;
    return { bid: cell('bid'), ask: cell('ask'), last: cell('last'), seq: Number(tr.dataset.seq || 0),
      snapshots: Number(tr.dataset.snapshots || 0), duplicates: Number(tr.dataset.duplicates || 0) };
  }, sym);
}
const rowSymbols = (p = page) => p.locator('tbody tr[data-symbol]').evaluateAll((trs) => trs.map((tr) => tr.dataset.symbol));
// Every row of `p` has a snapshot and a price.
async function waitRowsLive(p, count, timeout) {
  await p.waitForFunction((n) => {
    const trs = [...document.querySelectorAll('tbody tr[data-symbol]')];
    return trs.length === n && trs.every((tr) => Number(tr.dataset.snapshots) >= 1 && tr.querySelector('[data-field="bid"]').textContent !== '');
  }, count, { timeout });
}
// Per row: snapshots, duplicates, seq.
const rowCounters = (p) => p.locator('tbody tr[data-symbol]').evaluateAll((trs) => Object.fromEntries(trs.map((tr) =>
  [tr.dataset.symbol, { snapshots: Number(tr.dataset.snapshots || 0), duplicates: Number(tr.dataset.duplicates || 0), seq: Number(tr.dataset.seq || 0) }])));
const sessionId = (p) => p.locator('#server-id').textContent();
// The header's reconnect figures once this session's acks are in: { resumed, snapshotted }.
async function waitResumeInfo(p, expected, timeout) {
  await p.waitForFunction((want) => {
    const b = document.getElementById('resume-info');
    return b.dataset.resumed === String(want.resumed) && b.dataset.snapshotted === String(want.snapshotted);
  }, expected, { timeout }).catch(async (e) => {
    const b = await p.locator('#resume-info').evaluate((x) => `${x.textContent} (resumed=${x.dataset.resumed}, snapshotted=${x.dataset.snapshotted})`);
    throw new Error(`reconnect shows ${b}, expected ${expected.resumed} resumed · ${expected.snapshotted} snapshotted`);
  });
}
// A page of its own in the browser, for one step; `prepare(p)` runs before it loads.
async function openPage(url, prepare = () => {}) {
  const p = await context.newPage();
  p.on('pageerror', (e) => pageErrors.push(String(e)));
  p.setDefaultTimeout(15_000);
  prepare(p);
  await p.goto(url, { timeout: 15_000 });
  return p;
}
// Records the quotes and snapshots of the WebSocket frames the page receives: per symbol, the
// list of [type, seq, ts] in arrival order, each list cut into sessions at every welcome.
function recordFrames(p) {
  const rec = { sessions: [] };
  p.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
    let m;
    try { m = JSON.parse(typeof payload === 'string' ? payload : payload.toString()); } catch (e) { return; }
    if (m.type === 'welcome') rec.sessions.push({ welcome: m, acks: [], seqs: {} });
    const s = rec.sessions[rec.sessions.length - 1];
    if (!s) return;
    if (m.type === 'ack') s.acks.push(m);
    if (m.type === 'quote' || m.type === 'snapshot') (s.seqs[m.symbol] ||= []).push([m.type, m.seq, m.ts]);
  }));
  return rec;
}
async function averageRate(samples) {
  let sum = 0;
  for (let i = 0; i < samples; i++) {
    await sleep(1000);
    sum += Number(await page.locator('#msg-rate').getAttribute('data-rate'));
  }
  return sum / samples;
}

// ---- the walk-through -------------------------------------------------------------------------
async function main() {
  let base = '';
  let picked = [];
  const seqSeen = {};

  await step('the gateway starts and serves the dashboard page at /', async () => {
    assert(fs.existsSync(GATEWAY_BIN), `no gateway binary at ${GATEWAY_BIN} (cargo build -p gateway)`);
    gateway = await startGateway(0);
    base = `http://127.0.0.1:${gateway.port}/`;
    const res = await fetch(base);
    assert(res.status === 200, `GET / answered ${res.status}`);
    assert((res.headers.get('content-type') || '').startsWith('text/html'), `GET / content-type ${res.headers.get('content-type')}`);
    const html = await res.text();
    assert(html.includes('id="conn-state"') && html.includes('id="symbol-search"'), 'GET / is not the dashboard page (gateway/assets/index.html)');
  });

  await step('a first visit shows the ten most active symbols live, without a click', async () => {
    profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-browser-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1360, height: 760 }, timeout: 30_000,
    });
    page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.setDefaultTimeout(15_000);
    const opened = Date.now();
    await page.goto(base, { timeout: 15_000 });
    await waitConnState(['connected'], 10_000);
    assert((await page.locator('#conn-state').textContent()).trim() === 'connected', '#conn-state text is not "connected"');
    await waitRowsLive(page, 10, 10_000);
    const first = await rowSymbols();
    const listed = await (await fetch(new URL('symbols', base))).json();
    log(`     live within ${((Date.now() - opened) / 1000).toFixed(1)} s: ${first.join(' ')}`);
    assert(new Set(first).size === 10 && first.every((s) => listed.includes(s)), `rows ${first} are not ten listed symbols`);
    // The simulator's hottest symbol (a sixth of all updates) is among the ten most active.
    assert(first.includes('AAPL'), `AAPL, the busiest symbol, is not among ${first}`);
    const seqs = {};
    for (const s of first) seqs[s] = (await rowInfo(s)).seq;
    await page.waitForFunction((prev) => Object.entries(prev).every(([s, seq]) =>
      Number(document.querySelector(`tr[data-symbol="${s}"]`).dataset.seq) > seq), seqs, { timeout: 20_000 });
    assert(await page.locator('#transport').getAttribute('data-transport') === 'ws', 'not on WebSocket');
    assert((await page.locator('#resume-info').textContent()).trim() === '–', 'a first session has nothing to resume');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-first-visit.png') });
  });

  await step('the watchlist is cleared, and three symbols are picked with the search box', async () => {
    await page.click('#clear-watchlist');
    assert(await page.locator('tr[data-symbol]').count() === 0, 'clear left rows');
    const all = await (await fetch(new URL('symbols', base))).json();
    assert(Array.isArray(all) && all.length >= 3, 'GET /symbols lists fewer than three symbols');
    picked = all.slice(0, 3); // the well-known, busiest tickers come first
    for (const sym of picked) {
      await page.click('#symbol-search');
      await page.fill('#symbol-search', sym.length > 2 ? sym.slice(0, -1) : sym); // a partial name
      const option = page.locator(`#symbol-results li[data-symbol="${sym}"]`);
      await option.waitFor({ state: 'visible', timeout: 5_000 });
      await option.click();
      await page.locator(`tr[data-symbol="${sym}"]`).waitFor({ timeout: 5_000 });
    }
    const rows = await page.locator('tbody tr[data-symbol]').evaluateAll((trs) => trs.map((tr) => tr.dataset.symbol));
    assert(JSON.stringify(rows) === JSON.stringify(picked), `rows ${rows} != picked ${picked}`);
  });

  await step('each row gets a snapshot, then its prices change within seconds', async () => {
    await page.waitForFunction((syms) => syms.every((s) => {
      const tr = document.querySelector(`tr[data-symbol="${s}"]`);
      return Number(tr.dataset.snapshots) >= 1 && tr.querySelector('[data-field="bid"]').textContent !== '';
    }), picked, { timeout: 10_000 });
    const first = {};
    for (const s of picked) first[s] = await rowInfo(s);
    const deadline = Date.now() + 20_000;
    const changed = new Set();
    while (changed.size < picked.length && Date.now() < deadline) {
      await sleep(250);
      for (const s of picked) {
        const now = await rowInfo(s);
        assert(now.seq >= (seqSeen[s] || 0), `${s}: seq went back from ${seqSeen[s]} to ${now.seq}`);
        seqSeen[s] = now.seq;
        if (now.seq > first[s].seq && (now.bid !== first[s].bid || now.ask !== first[s].ask || now.last !== first[s].last)) changed.add(s);
      }
    }
    assert(changed.size === picked.length, `no price change within 20 s for ${picked.filter((s) => !changed.has(s))}`);
    const latency = (await page.locator('#latency').textContent()).trim();
    assert(/ms|s$/.test(latency), `latency not shown (${latency})`);
    assert(await page.locator('#feed-state').getAttribute('data-state') === 'live', 'feed not shown live');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-live.png') });
  });

  await step('switching the throttle to 1 s lowers the message rate', async () => {
    const before = await averageRate(3);
    await page.selectOption('#throttle', '1000');
    await sleep(2500); // let the rate window forget the unthrottled second
    const after = await averageRate(4);
    log(`     message rate: ${before.toFixed(1)}/s every update → ${after.toFixed(1)}/s at 1 s`);
    assert(after < before, `rate did not drop (${before.toFixed(1)} → ${after.toFixed(1)})`);
    // Three symbols at one quote per second each, plus at most a pong and a heartbeat.
    assert(after <= picked.length + 2.5, `rate ${after.toFixed(1)}/s is more than ${picked.length} symbols at 1/s allow`);
    const conflated = Number((await page.locator('#conflated').textContent()).replace(/,/g, ''));
    assert(conflated > 0, 'throttled quotes skip seq numbers: the conflation counter should have moved');
    assert((await page.locator('#notice').textContent()).trim() === '', `an error notice is shown: ${await page.locator('#notice').textContent()}`);
  });

  await step('stopping the gateway shows the page disconnected', async () => {
    await stopGateway('SIGTERM');
    await waitConnState(['disconnected', 'reconnecting'], 10_000);
    const text = (await page.locator('#conn-state').textContent()).trim();
    assert(text === 'disconnected' || text === 'reconnecting', `#conn-state says ${text}`);
    await sleep(1500); // a failed attempt or two, with backoff
    assert(['disconnected', 'reconnecting'].includes(await connState()), 'page claims a connection with no gateway');
    assert(await page.locator('#feed-state').getAttribute('data-state') !== 'live', 'feed shown live with no gateway');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-disconnected.png') });
  });

  await step('the gateway back on the same port: a new feed epoch, so the page\'s resume is answered with snapshots', async () => {
    const before = {};
    for (const s of picked) before[s] = await rowInfo(s);
    const port = Number(new URL(base).port);
    gateway = await startGatewayOn(port);
    assert(gateway.port === port, `gateway came back on ${gateway.port}, not ${port}`);
    await waitConnState(['connected'], 30_000);
    await page.waitForFunction(({ syms, prev }) => syms.every((s) => {
      const tr = document.querySelector(`tr[data-symbol="${s}"]`);
      return Number(tr.dataset.snapshots) > prev[s];
    }), { syms: picked, prev: Object.fromEntries(picked.map((s) => [s, before[s].snapshots])) }, { timeout: 10_000 });
    // The page asked to resume (its rows hold seqs of the old epoch); the new simulator's epoch
    // differs, so every symbol was snapshotted, and the header says so.
    await waitResumeInfo(page, { resumed: 0, snapshotted: picked.length }, 5_000);
    // and quotes flow again after the snapshot (the throttle choice was kept: 1 per second)
    const snap = {};
    for (const s of picked) snap[s] = await rowInfo(s);
    await page.waitForFunction(({ syms, seqs }) => syms.some((s) => Number(document.querySelector(`tr[data-symbol="${s}"]`).dataset.seq) !== seqs[s]),
      { syms: picked, seqs: Object.fromEntries(picked.map((s) => [s, snap[s].seq])) }, { timeout: 10_000 });
    assert(await page.locator('#throttle').inputValue() === '1000', 'the throttle choice was lost');
  });

  await step('a reload keeps the watchlist and takes fresh snapshots', async () => {
    await page.reload({ timeout: 15_000 });
    await waitConnState(['connected'], 10_000);
    const rows = await page.locator('tbody tr[data-symbol]').evaluateAll((trs) => trs.map((tr) => tr.dataset.symbol));
    assert(JSON.stringify(rows) === JSON.stringify(picked), `after reload rows are ${rows}`);
    await page.waitForFunction((syms) => syms.every((s) => Number(document.querySelector(`tr[data-symbol="${s}"]`).dataset.snapshots) >= 1),
      picked, { timeout: 10_000 });
    assert((await page.locator('#resume-info').textContent()).trim() === '–', 'a reloaded page has nothing to resume');
  });

  await step('a frozen gateway (SIGSTOP) shows the feed stale, then the page drops the silent link and resumes on SIGCONT', async () => {
    const before = {};
    for (const s of picked) before[s] = await rowInfo(s);
    const session = await sessionId(page);
    gateway.child.kill('SIGSTOP');
    try {
      // Nothing arrives any more: no quote, no heartbeat (1 s here). Stale after two silent beats.
      await page.waitForFunction(() => document.getElementById('feed-state').dataset.state === 'stale', null, { timeout: 10_000 });
      assert(await connState() === 'connected', 'the socket is still open: the page should still say connected while stale');
      await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-stale.png') });
      // After three silent beats the page gives up on the socket (a browser cannot see pings).
      await waitConnState(['disconnected', 'reconnecting'], 10_000);
    } finally {
      gateway.child.kill('SIGCONT');
    }
    await waitConnState(['connected'], 30_000);
    assert(await sessionId(page) !== session, 'no new session after the freeze');
    // Same gateway, same epoch, the missed updates still held: every row is resumed, none
    // snapshotted (no flash of snapshots), and nothing arrives twice.
    await waitResumeInfo(page, { resumed: picked.length, snapshotted: 0 }, 10_000);
    await page.waitForFunction(() => document.getElementById('feed-state').dataset.state === 'live', null, { timeout: 10_000 });
    for (const s of picked) {
      const now = await rowInfo(s);
      assert(now.snapshots === before[s].snapshots, `${s}: ${now.snapshots - before[s].snapshots} snapshot(s) after a resume`);
      assert(now.duplicates === 0, `${s}: ${now.duplicates} quote(s) received twice`);
      assert(now.seq >= before[s].seq, `${s}: seq went back from ${before[s].seq} to ${now.seq}`);
    }
  });

  await step('the network fails, not the gateway: across a cut connection the page resumes with every missed seq once, in order', async () => {
    const proxy = await new TcpProxy(gateway.port).start();
    let frames = null;
    // Another origin (its own storage): a first visit again.
    const p = await openPage(`http://127.0.0.1:${proxy.port}/`, (q) => { frames = recordFrames(q); });
    try {
      await waitRowsLive(p, 10, 15_000);
      const syms = await rowSymbols(p);
      await sleep(1000);
      const before = await rowCounters(p);
      proxy.cut(CUT_MS); // the gateway publishes on; the page cannot reach it for 1.5 s
      await p.waitForFunction(() => document.getElementById('conn-state').dataset.state !== 'connected', null, { timeout: 5_000 });
      await p.waitForFunction(() => document.getElementById('conn-state').dataset.state === 'connected', null, { timeout: 15_000 });
      await waitResumeInfo(p, { resumed: syms.length, snapshotted: 0 }, 10_000);
      await sleep(1000); // live quotes after the replay
      const after = await rowCounters(p);
      assert(frames.sessions.length === 2, `${frames.sessions.length} sessions recorded, expected 2`);
      const [one, two] = frames.sessions;
      assert(two.welcome.epoch === one.welcome.epoch, 'the epoch changed with the gateway up');
      const resume = two.acks.find((a) => Array.isArray(a.resumed));
      assert(resume && resume.resumed.length === syms.length, `the ack of the resume: ${JSON.stringify(resume)}`);
      let replayed = 0;
      for (const s of syms) {
        const a = one.seqs[s] || [], b = two.seqs[s] || [];
        assert(b.length > 0 && b.every(([type]) => type === 'quote'), `${s}: the second session has a snapshot or nothing`);
        assert(a.length > 0, `${s}: nothing in the first session`);
        const last = a[a.length - 1][1];
        const seqs = b.map(([, q]) => q);
        // What the cut made the page miss: the updates published before the new session opened.
        const missed = b.filter(([, , ts]) => ts < two.welcome.ts).length;
        assert(seqs[0] === last + 1, `${s}: the first quote after the cut is ${seqs[0]}, the last before it ${last}`);
        for (let i = 1; i < seqs.length; i++) {
          assert(seqs[i] > seqs[i - 1], `${s}: seq ${seqs[i]} after ${seqs[i - 1]}`);
          // Every missed seq exactly once and in order (later, live, a slow page may be conflated).
          if (i < missed) assert(seqs[i] === seqs[i - 1] + 1, `${s}: replayed seq ${seqs[i]} after ${seqs[i - 1]}`);
        }
        replayed += missed;
        assert(after[s].snapshots === before[s].snapshots && after[s].duplicates === 0, `${s}: ${JSON.stringify(after[s])} after the cut`);
      }
      log(`     ${syms.length} symbols resumed across a ${CUT_MS / 1000} s cut: ${replayed} missed updates replayed, no gap, no duplicate`);
      assert(replayed > 0, 'nothing was replayed: the cut missed no update?');
    } finally {
      await p.close();
      await proxy.close();
    }
  });

  await step('?transport=sse: quotes over Server-Sent Events (a real EventSource); a changed watchlist opens a new stream that resumes', async () => {
    const p = await openPage(`${base}?transport=sse`); // this origin's watchlist: the three picked
    try {
      await p.waitForFunction(() => document.getElementById('conn-state').dataset.state === 'connected', null, { timeout: 10_000 });
      assert(await p.locator('#transport').getAttribute('data-transport') === 'sse', 'not on SSE');
      assert((await p.locator('#transport').textContent()).includes('?transport=sse'), 'the header does not say why SSE');
      await waitRowsLive(p, picked.length, 10_000);
      const first = await rowCounters(p);
      await p.waitForFunction((prev) => Object.entries(prev).some(([s, r]) =>
        Number(document.querySelector(`tr[data-symbol="${s}"]`).dataset.seq) > r.seq), first, { timeout: 10_000 });
      const before = await rowCounters(p);
      const session = await sessionId(p);
      const listed = await (await fetch(new URL('symbols', base))).json();
      const extra = listed.find((s) => !picked.includes(s));
      await p.fill('#symbol-search', `${extra},`); // a typed list: added as written
      await p.press('#symbol-search', 'Enter');
      await p.waitForFunction((old) => document.getElementById('server-id').textContent !== old, session, { timeout: 10_000 });
      // The new stream names all four symbols and resumes the three the page holds.
      await waitResumeInfo(p, { resumed: picked.length, snapshotted: 1 }, 10_000);
      await waitRowsLive(p, picked.length + 1, 10_000);
      const after = await rowCounters(p);
      for (const s of picked) {
        assert(after[s].snapshots === before[s].snapshots, `${s}: snapshotted again by the new stream`);
        assert(after[s].duplicates === 0 && after[s].seq >= before[s].seq, `${s}: ${JSON.stringify(after[s])}`);
      }
      assert(after[extra].snapshots === 1, `${extra}: ${after[extra].snapshots} snapshots`);
      assert((await p.locator('#rtt').textContent()).trim() === 'n/a', 'rtt shown on a one-way stream');
      await p.screenshot({ path: path.join(ARTIFACTS, 'dashboard-sse.png') });
    } finally {
      await p.close();
    }
  });

  await step('a proxy that refuses WebSocket: the page falls back to SSE by itself, says so, and resumes across a cut stream', async () => {
    const proxy = await new TcpProxy(gateway.port, { blockWebSocket: true }).start();
    const p = await openPage(`http://127.0.0.1:${proxy.port}/`);
    try {
      await p.waitForFunction(() => document.getElementById('transport').dataset.transport === 'sse', null, { timeout: 20_000 });
      assert((await p.locator('#transport').textContent()).includes('fallback'), 'the header does not say it fell back');
      assert(proxy.upgradesRefused >= 3, `fell back after ${proxy.upgradesRefused} refused upgrades`);
      await waitRowsLive(p, 10, 15_000);
      await sleep(500);
      const before = await rowCounters(p);
      const session = await sessionId(p);
      proxy.cut(CUT_MS);
      await p.waitForFunction(() => document.getElementById('conn-state').dataset.state !== 'connected', null, { timeout: 5_000 });
      await p.waitForFunction(() => document.getElementById('conn-state').dataset.state === 'connected', null, { timeout: 15_000 });
      assert(await sessionId(p) !== session, 'no new stream after the cut');
      await waitResumeInfo(p, { resumed: 10, snapshotted: 0 }, 10_000);
      await sleep(500);
      const after = await rowCounters(p);
      for (const [s, r] of Object.entries(after)) {
        assert(r.snapshots === before[s].snapshots, `${s}: snapshotted after the cut`);
        assert(r.duplicates === 0 && r.seq > before[s].seq, `${s}: ${JSON.stringify(r)} after ${JSON.stringify(before[s])}`);
      }
      assert(await p.locator('#transport').getAttribute('data-transport') === 'sse', 'left SSE after the cut');
      await p.screenshot({ path: path.join(ARTIFACTS, 'dashboard-sse-fallback.png') });
    } finally {
      await p.close();
      await proxy.close();
    }
  });

  await step('with access tokens: the page passes its ?token= on to /symbols, /ws and /sse', async () => {
    const secured = await startGateway(0, ['--access-tokens', 'browser-secret']);
    const url = `http://127.0.0.1:${secured.port}/`;
    try {
      assert((await fetch(`${url}symbols`)).status === 401, '/symbols without a token is not 401');
      for (const query of ['?token=browser-secret', '?token=browser-secret&transport=sse']) {
        const p = await openPage(url + query); // a first visit: the list comes from /symbols
        try {
          await waitRowsLive(p, 10, 15_000);
          const transport = await p.locator('#transport').getAttribute('data-transport');
          assert(transport === (query.includes('sse') ? 'sse' : 'ws'), `${query}: on ${transport}`);
        } finally {
          await p.close();
        }
      }
    } finally {
      secured.child.kill('SIGTERM');
      await Promise.race([secured.exited, sleep(10_000)]);
    }
  });

  await step('a fuller watchlist renders; screenshot for a human', async () => {
    await page.selectOption('#throttle', '0');
    await page.click('#add-top');
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-symbol]').length >= 10, null, { timeout: 5_000 });
    await sleep(6000); // sparklines fill in
    const shot = path.join(ARTIFACTS, 'dashboard.png');
    const bottom = await page.evaluate(() => Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom) + 12);
    await page.screenshot({ path: shot, clip: { x: 0, y: 0, width: 1360, height: Math.min(760, bottom) } });
    if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
      fs.copyFileSync(shot, path.join(ROOT, 'docs/dashboard.png'));
      log('     copied the screenshot to docs/dashboard.png');
    }
    assert(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(' | ')}`);
  });

  await step('hundreds of rows: "+ all" subscribes every symbol and every row gets its snapshot', async () => {
    const total = (await (await fetch(new URL('symbols', base))).json()).length;
    await page.click('#add-all');
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-symbol]').length > 10, null, { timeout: 5_000 });
    const rows = await page.locator('tbody tr[data-symbol]').count();
    // The page stops at the session's max_subscriptions (from the welcome) and says so.
    assert(rows === total || (await page.locator('#notice').textContent()).includes('subscriptions'),
      `${rows} rows for ${total} symbols, and no notice about the subscription limit`);
    await page.waitForFunction(() => [...document.querySelectorAll('tbody tr[data-symbol]')].every((tr) => Number(tr.dataset.snapshots) >= 1),
      null, { timeout: 20_000 });
    // Rows are drawn while on screen: the top ones move, and the last one is drawn once scrolled to.
    const topSeqs = () => page.locator('tbody tr[data-symbol]').evaluateAll((trs) => trs.slice(0, 10).map((tr) => Number(tr.dataset.seq)));
    const s0 = await topSeqs();
    await sleep(3000);
    const moved = (await topSeqs()).filter((v, i) => v > s0[i]).length;
    log(`     ${rows} rows; ${moved} of the first 10 updated within 3 s`);
    assert(moved > 0, 'no row moved after subscribing to all');
    const lastRow = page.locator('tbody tr[data-symbol]').last();
    await lastRow.scrollIntoViewIfNeeded();
    await page.waitForFunction(() => {
      const trs = document.querySelectorAll('tbody tr[data-symbol]');
      return trs[trs.length - 1].querySelector('[data-field="bid"]').textContent !== '';
    }, null, { timeout: 5_000 });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-all.png') });
    assert(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(' | ')}`);
  });
}

async function cleanup() {
  for (const proxy of proxies) await proxy.close().catch(() => {});
  if (context) await Promise.race([context.close().catch(() => {}), sleep(10_000)]);
  await stopGateway('SIGTERM').catch(() => {});
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
}

const watchdog = setTimeout(() => {
  log(`FAIL the whole run took longer than ${WHOLE_RUN_TIMEOUT_MS / 1000} s`);
  results.failed += 1;
  if (gateway) gateway.child.kill('SIGKILL');
  log(`${results.passed} passed, ${results.failed} failed, ${results.skipped} skipped`);
  process.exit(1);
}, WHOLE_RUN_TIMEOUT_MS);

try {
  await main();
} finally {
  await cleanup();
  clearTimeout(watchdog);
}
log(`screenshots and the gateway log: ${path.relative(process.cwd(), ARTIFACTS) || ARTIFACTS}`);
log(`${results.passed} passed, ${results.failed} failed${results.skipped ? `, ${results.skipped} skipped` : ''}`);
process.exit(results.failed > 0 ? 1 : 0);
