// crossnode.mjs - the cross-node rows of tests/bench/run: one WebSocket
// subscriber of topic "xn" on one kvbusd node (--sub-port) and one WebSocket
// publisher on another node (--pub-port) of the same cluster (same pub/sub
// provider), so every message goes publisher -> node 1 -> provider (Redis
// pub/sub or Kafka) -> node 2 -> subscriber. Prints one machine-readable line.
//
// Phases, after a warm-up that publishes probes until one arrives (the
// subscription has reached the provider):
//   paced: RATE messages/s for SECONDS s (sent in 5 ms ticks); p50/p99 of
//          publish-to-deliver latency over every delivery.
//   max:   for SECONDS s, at most WINDOW messages in flight (published, not
//          yet delivered or reported dropped); delivered/s = deliveries /
//          (last delivery - first publish). A window that makes no progress
//          for STALL_MS counts its messages as missing and is reopened.
// Payloads are "<phase>:<index>:<send ns>:" padded to BYTES bytes.
// Exit status 0 = figures valid; 1 = a connection failed or an error frame
// came back. Missing and dropped messages are reported, not fatal.
//
// Usage: node crossnode.mjs --pub-port=N --sub-port=N [--rate=1000]
//        [--seconds=10] [--window=50] [--bytes=100]

import { createRequire } from 'node:module';

const TOPIC = 'xn';
const HOST = '127.0.0.1';
const SETUP_TIMEOUT_MS = 15000;
const WARMUP_TIMEOUT_MS = 15000;
const DRAIN_MS = 3000;      // after a phase, deliveries may still arrive
const STALL_MS = 1000;      // max phase: no delivery for this long = missing
const TICK_MS = 5;
const CLOSE_TIMEOUT_MS = 2000;

const require = createRequire(new URL('../e2e/package.json', import.meta.url));
const WebSocket = require('ws');

function parseArgs(argv) {
    const o = { 'pub-port': 0, 'sub-port': 0, rate: 1000, seconds: 10, window: 50, bytes: 100 };
    for (const a of argv) {
        const m = /^--([a-z-]+)=(\d+)$/.exec(a);
        if (!m || !(m[1] in o)) throw new Error(`bad argument: ${a}`);
        o[m[1]] = Number(m[2]);
    }
    for (const [k, v] of Object.entries(o))
        if (!Number.isInteger(v) || v <= 0) throw new Error(`--${k} must be a positive integer`);
    if (o.bytes < 40) throw new Error('--bytes must be at least 40');
    return o;
}

const hr0 = process.hrtime();
function nowNs() { const [s, ns] = process.hrtime(hr0); return s * 1e9 + ns; }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function payload(phase, index, bytes) {
    const head = `${phase}:${index}:${nowNs()}:`;
    return head + 'x'.repeat(Math.max(0, bytes - head.length));
}

function withTimeout(promise, ms, what) {
    let timer;
    const t = new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms); });
    return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

const errors = [];
let closing = false;
const sockets = [];

function open(port, what, onFrame) {
    return new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${HOST}:${port}/v1/ws`, { perMessageDeflate: false });
        sockets.push(ws);
        let up = false;
        ws.on('open', () => { up = true; resolve(ws); });
        ws.on('error', (e) => (up ? (closing || errors.push(`${what}: ${e.message}`)) : reject(e)));
        ws.on('close', (code) => { if (!closing) errors.push(`${what}: closed (${code})`); });
        ws.on('message', (d) => onFrame(JSON.parse(d)));
    });
}

const pct = (arr, p) => {
    if (!arr.length) return '-';
    const s = Float64Array.from(arr).sort();
    return s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(2);
};

async function run(o) {
    // Per phase: published, delivered, dropped, latencies, highest index seen.
    const ph = {};
    for (const k of ['w', 'p', 'm']) ph[k] = { pub: 0, got: 0, dropped: 0, lat: [], tLast: 0, seen: new Set() };
    let current = 'w';
    let onDeliver = () => {};
    let subscribed;
    const subOk = new Promise((r) => { subscribed = r; });
    let acks = 0;

    const sub = await withTimeout(open(o['sub-port'], 'subscriber', (f) => {
        if (f.type === 'subscribed') subscribed();
        else if (f.type === 'message') {
            const t = nowNs();
            const [phase, idx, sent] = String(f.data).split(':', 3);
            const s = ph[phase];
            if (!s) { errors.push(`subscriber: unexpected payload ${String(f.data).slice(0, 40)}`); return; }
            if (s.seen.has(idx)) { errors.push(`subscriber: duplicate ${phase}:${idx}`); return; }
            s.seen.add(idx);
            s.got++;
            s.tLast = t;
            s.lat.push((t - Number(sent)) / 1e6);
            onDeliver(phase);
        } else if (f.type === 'dropped') {
            ph[current].dropped += f.count;
            onDeliver(current);
        } else errors.push(`subscriber: ${JSON.stringify(f)}`);
    }), SETUP_TIMEOUT_MS, 'subscriber connect');
    sub.send(JSON.stringify({ op: 'subscribe', topics: [TOPIC] }));
    await withTimeout(subOk, SETUP_TIMEOUT_MS, 'subscribe');

    const pubWs = await withTimeout(open(o['pub-port'], 'publisher', (f) => {
        if (f.type === 'published') acks++;
        else errors.push(`publisher: ${JSON.stringify(f)}`);
    }), SETUP_TIMEOUT_MS, 'publisher connect');
    const publish = (phase) => {
        const s = ph[phase];
        s.pub++;
        pubWs.send(JSON.stringify({ op: 'publish', topic: TOPIC, data: payload(phase, s.pub, o.bytes) }));
    };

    // Warm-up: a probe every 100 ms until one crosses.
    const wEnd = Date.now() + WARMUP_TIMEOUT_MS;
    while (ph.w.got === 0 && Date.now() < wEnd && errors.length === 0) {
        publish('w');
        await sleep(100);
    }
    if (ph.w.got === 0) throw new Error(`no probe crossed within ${WARMUP_TIMEOUT_MS} ms`);
    await sleep(300);   // late probes

    // Paced phase.
    current = 'p';
    const pStart = nowNs();
    const total = o.rate * o.seconds;
    while (ph.p.pub < total && errors.length === 0) {
        const due = Math.min(total, Math.floor((nowNs() - pStart) / 1e9 * o.rate));
        while (ph.p.pub < due) publish('p');
        await sleep(TICK_MS);
    }
    const pDrainEnd = Date.now() + DRAIN_MS;
    while (ph.p.got + ph.p.dropped < ph.p.pub && Date.now() < pDrainEnd) await sleep(10);
    await sleep(100);

    // Max phase: bounded in-flight window.
    current = 'm';
    const m = ph.m;
    let written = 0;     // messages counted as finished (got, dropped, or missing)
    let missing = 0;
    let lastProgress = Date.now();
    const accounted = () => m.got + m.dropped + missing;
    const mStart = nowNs();
    const mEnd = mStart + o.seconds * 1e9;
    let done;
    const finished = new Promise((r) => { done = r; });
    const fill = () => {
        while (nowNs() < mEnd && m.pub - accounted() < o.window) publish('m');
        if (nowNs() >= mEnd && accounted() >= m.pub) done();
    };
    onDeliver = (phase) => { if (phase === 'm') { lastProgress = Date.now(); fill(); } };
    const watchdog = setInterval(() => {
        if (errors.length) return done();
        if (Date.now() - lastProgress > STALL_MS && accounted() < m.pub) {
            missing += m.pub - accounted();   // give up on the open window
            lastProgress = Date.now();
        }
        fill();
    }, 20);
    fill();
    await withTimeout(finished, o.seconds * 1000 + DRAIN_MS + STALL_MS * 2, 'max phase').catch((e) => errors.push(e.message));
    clearInterval(watchdog);
    written = m.got;
    // A late delivery after being counted missing reduces the missing count.
    const mMissing = Math.max(0, m.pub - m.got - m.dropped);

    closing = true;
    await Promise.all(sockets.map((ws) => new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve();
        ws.once('close', resolve);
        ws.close(1000);
        setTimeout(() => { ws.terminate(); resolve(); }, CLOSE_TIMEOUT_MS).unref();
    })));

    const mSeconds = (m.tLast - mStart) / 1e9;
    const fields = {
        rate: o.rate, seconds: o.seconds, window: o.window, bytes: o.bytes,
        paced_published: ph.p.pub, paced_delivered: ph.p.got, paced_dropped: ph.p.dropped,
        paced_missing: Math.max(0, ph.p.pub - ph.p.got - ph.p.dropped),
        paced_p50_ms: pct(ph.p.lat, 0.5), paced_p99_ms: pct(ph.p.lat, 0.99),
        max_published: m.pub, max_delivered: written, max_dropped: m.dropped, max_missing: mMissing,
        max_per_s: mSeconds > 0 ? Math.round(written / mSeconds) : 0,
        max_p50_ms: pct(m.lat, 0.5), max_p99_ms: pct(m.lat, 0.99),
        acks, publishes: ph.w.pub + ph.p.pub + m.pub, errors: errors.length,
    };
    console.log('crossnode ' + Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' '));
    for (const e of errors.slice(0, 5)) console.error(`crossnode: ${e}`);
    return errors.length === 0;
}

try {
    process.exitCode = (await run(parseArgs(process.argv.slice(2)))) ? 0 : 1;
} catch (e) {
    console.error(`crossnode: ${e.message}`);
    process.exitCode = 1;
}
setTimeout(() => process.exit(), CLOSE_TIMEOUT_MS).unref();
