// fanout.mjs - one side of the fan-out benchmark row of tests/bench/run:
// one publisher and SUBS subscribers on one topic, either kvbusd's
// WebSocket feed (/v1/ws, JSON frames) or redis-server's pub/sub (RESP
// written by hand over node:net), then prints one machine-readable line.
//
// Both sides run the same loop: SUBS subscriber connections subscribe to
// "bench" (and wait for the server's confirmation), one more connection
// publishes MESSAGES payloads of BYTES bytes, each carrying its index and
// its process.hrtime() send time. The publisher keeps at most WINDOW
// messages in flight, a message counting as in flight until every
// subscriber has received it (or been told it was dropped), so no queue on
// either server grows past WINDOW messages per connection. Publish acks are
// read and checked but do not pace anything.
//
// Printed figures: deliveries/s = messages received by all subscribers /
// (last receive - first publish); p50/p99 of publish-to-receive latency
// over every delivery; the CPU this node process used over that interval
// (100 = one core, the client is saturated near it) and, given --server-pid,
// the server's. Exit status 0 = figures valid; 1 = a connection failed, an
// error frame came back, or a published message never arrived.
//
// It leaves out: more than one topic, patterns, binary payloads, and any
// client other than the `ws` package of tests/e2e (found by path, so no
// NODE_PATH is needed).
//
// Usage: node fanout.mjs --side=kvbus|redis --port=N [--subs=100]
//        [--messages=20000] [--window=20] [--bytes=100] [--deadline-s=30]
//        [--server-pid=PID] [--clk-tck=100]

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';

const TOPIC = 'bench';
const HOST = '127.0.0.1';
const SETUP_TIMEOUT_MS = 15000;   // all subscribers confirmed within this
const DRAIN_TIMEOUT_MS = 5000;    // in-flight messages arrive within this
const CLOSE_TIMEOUT_MS = 2000;    // sockets closed cleanly within this
const MAX_LATENCY_SAMPLES = 4e6;  // larger runs record every k-th delivery
const MIN_PAYLOAD_BYTES = 32;     // room for "index:send-time:"

function parseArgs(argv) {
    const opts = {
        side: '', port: 0, subs: 100, messages: 20000, window: 20,
        bytes: 100, 'deadline-s': 30, 'server-pid': 0, 'clk-tck': 100,
    };
    for (const arg of argv) {
        const m = /^--([a-z-]+)=(.*)$/.exec(arg);
        if (!m || !(m[1] in opts)) throw new Error(`bad argument: ${arg}`);
        opts[m[1]] = m[1] === 'side' ? m[2] : Number(m[2]);
    }
    if (opts.side !== 'kvbus' && opts.side !== 'redis')
        throw new Error('--side must be kvbus or redis');
    for (const k of ['port', 'subs', 'messages', 'window', 'bytes', 'deadline-s'])
        if (!Number.isInteger(opts[k]) || opts[k] <= 0)
            throw new Error(`--${k} must be a positive integer`);
    if (opts.bytes < MIN_PAYLOAD_BYTES)
        throw new Error(`--bytes must be at least ${MIN_PAYLOAD_BYTES}`);
    return opts;
}

const hr0 = process.hrtime();

/* Nanoseconds since this process started measuring (exact in a double). */
function nowNs() {
    const [s, ns] = process.hrtime(hr0);
    return s * 1e9 + ns;
}

/* "<index>:<send ns>:" padded with 'x' to exactly `bytes` ASCII bytes. */
function makePayload(index, bytes) {
    const head = `${index}:${nowNs()}:`;
    return head + 'x'.repeat(bytes - head.length);
}

/* The send time in a payload made by makePayload, or NaN. */
function payloadSentNs(payload) {
    const a = payload.indexOf(':');
    const b = payload.indexOf(':', a + 1);
    return a < 0 || b < 0 ? NaN : Number(payload.slice(a + 1, b));
}

/* utime + stime of a process, in seconds, or NaN if unreadable. */
function procCpuSeconds(pid, clkTck) {
    if (!pid) return NaN;
    try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return (Number(f[11]) + Number(f[12])) / clkTck;   // fields 14, 15
    } catch {
        return NaN;
    }
}

function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// --- kvbusd: WebSocket, JSON frames (SPEC 7) --------------------------------

/*
 * Transports share one shape: subscriber(i, sink) resolves once the server
 * confirmed the subscription, then calls sink.message(i, payloadString),
 * sink.dropped(i, count) and sink.fail(reason); publisher(sink) resolves to
 * {publish(payload), close()} and calls sink.ack() per publish acknowledged.
 */
function kvbusTransport(port) {
    const require = createRequire(new URL('../e2e/package.json', import.meta.url));
    const WebSocket = require('ws');
    const url = `ws://${HOST}:${port}/v1/ws`;
    const sockets = [];

    function open(sink, what, onFrame) {
        return new Promise((resolve, reject) => {
            const ws = new WebSocket(url, { perMessageDeflate: false });
            sockets.push(ws);
            let connected = false;
            ws.on('open', () => { connected = true; resolve(ws); });
            ws.on('error', (e) => (connected ? sink.fail(`${what}: ${e.message}`) : reject(e)));
            ws.on('close', (code) => sink.closed(`${what}: closed (${code})`));
            ws.on('message', (data) => onFrame(JSON.parse(data)));
        });
    }

    return {
        subscriber(i, sink) {
            return new Promise((resolve, reject) => {
                open(sink, `subscriber ${i}`, (f) => {
                    if (f.type === 'message') sink.message(i, f.data);
                    else if (f.type === 'dropped') sink.dropped(i, f.count);
                    else if (f.type === 'subscribed') resolve();
                    else sink.fail(`subscriber ${i}: ${JSON.stringify(f)}`);
                }).then((ws) => ws.send(JSON.stringify({ op: 'subscribe', topics: [TOPIC] })),
                        reject);
            });
        },
        async publisher(sink) {
            const ws = await open(sink, 'publisher', (f) => {
                if (f.type === 'published') sink.ack(1);
                else sink.fail(`publisher: ${JSON.stringify(f)}`);
            });
            return {
                publish(payload) {
                    ws.send(JSON.stringify({ op: 'publish', topic: TOPIC, data: payload }));
                },
            };
        },
        close() {
            return Promise.all(sockets.map((ws) => new Promise((resolve) => {
                if (ws.readyState === WebSocket.CLOSED) return resolve();
                ws.once('close', resolve);
                ws.close(1000);
                setTimeout(() => { ws.terminate(); resolve(); }, CLOSE_TIMEOUT_MS).unref();
            })));
        },
    };
}

// --- redis-server: RESP over node:net ----------------------------------------

/* A RESP command as one buffer: an array of bulk strings. */
function respCommand(...args) {
    let out = `*${args.length}\r\n`;
    for (const a of args) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
    return out;
}

/*
 * Incremental RESP reader for what pub/sub connections receive: arrays,
 * bulk strings (decoded as latin1 strings), integers, simple strings and
 * errors (as {error}). feed(chunk) calls onValue for each complete value.
 */
class RespReader {
    constructor(onValue) {
        this.onValue = onValue;
        this.buf = null;
    }

    feed(chunk) {
        let buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
        let pos = 0;
        for (;;) {
            const r = this.parse(buf, pos);
            if (!r) break;
            pos = r.end;
            this.onValue(r.value);
        }
        this.buf = pos < buf.length ? buf.subarray(pos) : null;
    }

    /* {value, end} for the value at pos, or null if it is not complete. */
    parse(buf, pos) {
        const eol = buf.indexOf('\r\n', pos, 'latin1');
        if (eol < 0) return null;
        const type = buf[pos];
        const line = buf.latin1Slice(pos + 1, eol);
        const next = eol + 2;
        switch (type) {
        case 0x2b: return { value: line, end: next };                  // +
        case 0x2d: return { value: { error: line }, end: next };       // -
        case 0x3a: return { value: Number(line), end: next };          // :
        case 0x24: {                                                    // $
            const n = Number(line);
            if (n < 0) return { value: null, end: next };
            if (buf.length < next + n + 2) return null;
            return { value: buf.latin1Slice(next, next + n), end: next + n + 2 };
        }
        case 0x2a: {                                                    // *
            const n = Number(line);
            const items = [];
            let end = next;
            for (let k = 0; k < n; k++) {
                const r = this.parse(buf, end);
                if (!r) return null;
                items.push(r.value);
                end = r.end;
            }
            return { value: items, end };
        }
        default:
            throw new Error(`RESP: unexpected byte 0x${type.toString(16)}`);
        }
    }
}

function redisTransport(port) {
    const sockets = [];

    function open(sink, what, onValue) {
        return new Promise((resolve, reject) => {
            const sock = net.connect({ host: HOST, port, noDelay: true });
            sockets.push(sock);
            const reader = new RespReader(onValue);
            let connected = false;
            sock.on('connect', () => { connected = true; resolve(sock); });
            sock.on('data', (chunk) => {
                try {
                    reader.feed(chunk);
                } catch (e) {
                    sink.fail(`${what}: ${e.message}`);
                }
            });
            sock.on('error', (e) => (connected ? sink.fail(`${what}: ${e.message}`) : reject(e)));
            sock.on('close', () => sink.closed(`${what}: closed`));
        });
    }

    return {
        subscriber(i, sink) {
            return new Promise((resolve, reject) => {
                open(sink, `subscriber ${i}`, (v) => {
                    if (Array.isArray(v) && v[0] === 'message') sink.message(i, v[2]);
                    else if (Array.isArray(v) && v[0] === 'subscribe') resolve();
                    else sink.fail(`subscriber ${i}: ${JSON.stringify(v)}`);
                }).then((sock) => sock.write(respCommand('SUBSCRIBE', TOPIC)), reject);
            });
        },
        async publisher(sink, subs) {
            const sock = await open(sink, 'publisher', (v) => {
                if (v === subs) sink.ack(1);
                else sink.fail(`publisher: PUBLISH answered ${JSON.stringify(v)}, ` +
                               `expected ${subs} receivers`);
            });
            return {
                publish(payload) {
                    sock.write(respCommand('PUBLISH', TOPIC, payload));
                },
            };
        },
        close() {
            return Promise.all(sockets.map((sock) => new Promise((resolve) => {
                if (sock.destroyed) return resolve();
                sock.once('close', resolve);
                sock.end();
                setTimeout(() => { sock.destroy(); resolve(); }, CLOSE_TIMEOUT_MS).unref();
            })));
        },
    };
}

// --- the measured loop --------------------------------------------------------

async function run(opts) {
    const { subs, messages, window: win, bytes } = opts;
    const transport = opts.side === 'kvbus' ? kvbusTransport(opts.port)
                                            : redisTransport(opts.port);
    const got = new Int32Array(subs);              // per subscriber: received + dropped
    const reached = new Int32Array(messages + 2);  // [k]: subscribers with got >= k
    const stride = Math.max(1, Math.ceil(messages * subs / MAX_LATENCY_SAMPLES));
    const samples = new Float64Array(Math.ceil(messages * subs / stride) + 1);
    const st = {
        published: 0, complete: 0, received: 0, dropped: 0, acks: 0,
        nsamples: 0, errors: [], closing: false, tFirst: 0, tLast: 0,
    };
    let pub = null;
    let finish;
    const finished = new Promise((resolve) => { finish = resolve; });
    const deadlineNs = () => st.tFirst + opts['deadline-s'] * 1e9;

    /* Publishes while fewer than WINDOW messages are still in flight. */
    function fill() {
        while (st.published < messages && st.published - st.complete < win) {
            if (st.published > 0 && nowNs() > deadlineNs()) break;
            st.published++;
            pub.publish(makePayload(st.published, bytes));
        }
        if (st.complete === st.published &&
            (st.published === messages || nowNs() > deadlineNs()))
            finish();
    }

    /* Subscriber i has accounted for one more message (received or dropped). */
    function advance(i) {
        const k = ++got[i];
        if (k > messages) {
            sink.fail(`subscriber ${i}: more messages than were published`);
            return;
        }
        if (++reached[k] === subs) {
            while (st.complete < st.published && reached[st.complete + 1] === subs)
                st.complete++;
            fill();
        }
    }

    const sink = {
        message(i, payload) {
            const t = nowNs();
            st.tLast = t;
            if (st.received++ % stride === 0)
                samples[st.nsamples++] = (t - payloadSentNs(payload)) / 1e6;
            advance(i);
        },
        dropped(i, count) {
            st.dropped += count;
            for (let k = 0; k < count && !st.closing; k++) advance(i);
        },
        ack(n) { st.acks += n; },
        fail(reason) {
            if (st.closing) return;
            st.errors.push(reason);
            finish();
        },
        closed(reason) { sink.fail(reason); },
    };

    await withTimeout(Promise.all(Array.from({ length: subs }, (_, i) =>
        transport.subscriber(i, sink))), SETUP_TIMEOUT_MS, 'subscribing');
    pub = await withTimeout(transport.publisher(sink, subs), SETUP_TIMEOUT_MS,
                            'publisher connect');

    const cpu0 = process.cpuUsage();
    const srv0 = procCpuSeconds(opts['server-pid'], opts['clk-tck']);
    st.tFirst = nowNs();
    fill();
    // Stops waiting DRAIN_TIMEOUT_MS after the publish deadline.
    const drain = setTimeout(() => finish(), opts['deadline-s'] * 1000 + DRAIN_TIMEOUT_MS);
    await finished;
    clearTimeout(drain);
    const cpu = process.cpuUsage(cpu0);
    const srv1 = procCpuSeconds(opts['server-pid'], opts['clk-tck']);
    st.closing = true;
    await transport.close();

    const seconds = (st.tLast - st.tFirst) / 1e9;
    const expected = st.published * subs;
    const lost = expected - st.received - st.dropped;
    if (lost > 0) st.errors.push(`${lost} deliveries never arrived`);
    if (st.acks < st.published && st.errors.length === 0)
        st.errors.push(`${st.published - st.acks} publishes were not acknowledged`);
    const sorted = samples.subarray(0, st.nsamples).sort();
    const pct = (p) => (sorted.length
        ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(2)
        : '-');
    const fields = {
        side: opts.side, subs, messages, window: win, bytes,
        published: st.published, deliveries: st.received, dropped: st.dropped,
        lost: Math.max(0, lost), errors: st.errors.length,
        seconds: seconds.toFixed(3),
        deliveries_per_s: seconds > 0 ? Math.round(st.received / seconds) : 0,
        p50_ms: pct(0.50), p99_ms: pct(0.99),
        client_cpu_pct: seconds > 0
            ? Math.round((cpu.user + cpu.system) / 1e6 / seconds * 100) : '-',
        server_cpu_pct: seconds > 0 && Number.isFinite(srv1 - srv0)
            ? Math.round((srv1 - srv0) / seconds * 100) : '-',
    };
    console.log('fanout ' + Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' '));
    for (const e of st.errors.slice(0, 5)) console.error(`fanout: ${opts.side}: ${e}`);
    return st.errors.length === 0;
}

try {
    const ok = await run(parseArgs(process.argv.slice(2)));
    process.exitCode = ok ? 0 : 1;
} catch (e) {
    console.error(`fanout: ${e.message}`);
    process.exitCode = 1;
}
// Sockets are closed by now; never linger on a stray handle.
setTimeout(() => process.exit(), CLOSE_TIMEOUT_MS).unref();
