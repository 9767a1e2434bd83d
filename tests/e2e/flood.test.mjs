// Hostile-input e2e tests: a kvbusd of its own (KVBUSD) with small limits
// takes a flood of several hundred concurrent bad connections - slowloris
// headers trickling a byte a second, connections that send nothing,
// oversize bodies, oversize headers, garbage WebSocket frames - while a
// well-behaved client keeps doing PUT/GET (on a keep-alive connection and
// on fresh ones) and WebSocket publish/subscribe. Every good request must
// succeed, each bad class must get its documented answer, and the server's
// RSS must stay bounded. Then one test per limit key, each against a
// kvbusd configured with that limit small.
//
// Time bounds here are generous liveness limits, not measurements.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { parseResponses, sleep } from './lib.mjs';
import {
    WsClient, httpRequest, metricValue, nextId, parseServerFrames,
    rawWsConnect, rssBytes, startKvbusd, waitFor, withTimeout, OP_CLOSE,
} from './wslib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KVBUSD = process.env.KVBUSD ??
    path.resolve(HERE, '../../build/kvbusd');
const ASAN = KVBUSD.includes('build-asan');

const GOOD_REQUEST_MS = 5000;  // bound on each well-behaved request
const LIVENESS_MS = 15000;     // bound on "the server closed it"
const FLOOD_MS = 6000;         // how long the bad clients keep coming
const HEADER_TIMEOUT_MS = 1000;
const MAX_CONNECTIONS = 128;
const MAX_HEADER_BYTES = 4096;
const MAX_VALUE_BYTES = 65536;
// RSS may grow by this much during the flood (ASan's shadow memory and
// quarantine make its growth much larger).
const RSS_GROWTH_MAX = (ASAN ? 512 : 64) * 1024 * 1024;

const WORKERS = {
    slowloris: 150,
    silent: 50,
    bigBody: 30,
    bigHeaders: 30,
    wsGarbage: 30,
};

/* ------------------------------------------------------------------ */
/* Bad clients                                                          */

/* The status of the first response in buf, or 'none' when it has none. */
function outcomeOf(buf) {
    const m = /^HTTP\/1\.1 (\d{3}) /.exec(buf.toString('latin1', 0, 16));
    return m ? Number(m[1]) : 'none';
}

/*
 * Opens a connection to port, calls start(sock) once connected, and
 * resolves with everything the server sent once it closes the connection.
 */
function oneBadConnection(port, start) {
    return withTimeout(new Promise((resolve) => {
        const parts = [];
        const sock = net.connect({ host: '127.0.0.1', port });
        let timer = null;
        sock.on('connect', () => { timer = start(sock); });
        sock.on('data', (c) => parts.push(c));
        sock.on('error', () => {});
        sock.on('close', () => {
            if (timer) clearInterval(timer);
            resolve(Buffer.concat(parts));
        });
    }), LIVENESS_MS, 'the server to close a bad connection');
}

/* Outcome counts of one bad class, with one body kept per status. */
class Tally {
    constructor() { this.counts = {}; this.bodies = {}; }
    add(key, body) {
        this.counts[key] = (this.counts[key] ?? 0) + 1;
        if (body !== undefined && this.bodies[key] === undefined) this.bodies[key] = body;
    }
    /* Asserts that only allowed outcomes occurred and `needed` did. */
    check(name, needed, allowed) {
        for (const k of Object.keys(this.counts)) {
            assert.ok([needed, ...allowed].map(String).includes(k),
                `${name}: unexpected outcome ${k} (${JSON.stringify(this.counts)})`);
        }
        assert.ok(this.counts[needed] > 0,
            `${name}: no ${needed} seen (${JSON.stringify(this.counts)})`);
    }
}

/* The JSON error body of a response held in buf. */
function errorBody(buf) {
    const [res] = parseResponses(buf);
    return JSON.parse(res.body.toString());
}

/* Repeats attempt() until stop.now is true, pausing pauseMs in between. */
async function loop(stop, pauseMs, attempt) {
    while (!stop.now) {
        await attempt();
        await sleep(pauseMs + Math.floor(Math.random() * pauseMs));
    }
}

const badClients = {
    /* A request line and headers trickling one byte a second. */
    slowloris(port, stop, tally) {
        return loop(stop, 100, async () => {
            const buf = await oneBadConnection(port, (sock) => {
                sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ');
                return setInterval(() => sock.write('a'), 1000);
            });
            const o = outcomeOf(buf);
            tally.add(o, o === 408 ? errorBody(buf) : undefined);
        });
    },
    /* Connects and sends nothing. */
    silent(port, stop, tally) {
        return loop(stop, 100, async () => {
            tally.add(outcomeOf(await oneBadConnection(port, () => null)));
        });
    },
    /* Announces a 10 MB body and starts sending it. */
    bigBody(port, stop, tally) {
        return loop(stop, 20, async () => {
            const buf = await oneBadConnection(port, (sock) => {
                sock.write('PUT /v1/kv/default/flood HTTP/1.1\r\nHost: x\r\n' +
                    'Content-Length: 10000000\r\n\r\n');
                sock.write(Buffer.alloc(16384, 0x61));
                return null;
            });
            const o = outcomeOf(buf);
            tally.add(o, o === 413 ? errorBody(buf) : undefined);
        });
    },
    /* A header block twice max_header_bytes. */
    bigHeaders(port, stop, tally) {
        return loop(stop, 20, async () => {
            const buf = await oneBadConnection(port, (sock) => {
                sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ' +
                    'b'.repeat(2 * MAX_HEADER_BYTES) + '\r\n\r\n');
                return null;
            });
            const o = outcomeOf(buf);
            tally.add(o, o === 431 ? errorBody(buf) : undefined);
        });
    },
    /* A WebSocket upgrade, then bytes that are no valid frame. */
    wsGarbage(port, stop, tally) {
        return loop(stop, 50, async () => {
            let conn;
            try {
                conn = await rawWsConnect({ host: '127.0.0.1', port, timeoutMs: LIVENESS_MS });
            } catch (e) {
                const m = /handshake refused: HTTP\/1\.1 (\d{3})/.exec(e.message);
                tally.add(m ? `refused ${m[1]}` : 'none');
                return;
            }
            const { sock } = conn;
            const closed = new Promise((resolve) => {
                let buf = Buffer.from(conn.rest);
                sock.on('data', (c) => { buf = Buffer.concat([buf, c]); });
                sock.on('error', () => {});
                sock.on('close', () => resolve(buf));
            });
            sock.resume();
            // Unmasked frames: a client must mask every frame (RFC 6455 5.1).
            sock.write(Buffer.from([0x81, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f]));
            const buf = await withTimeout(closed, LIVENESS_MS, 'close after garbage frames');
            const close = parseServerFrames(buf).frames.find((f) => f.opcode === OP_CLOSE);
            tally.add(close && close.payload.length >= 2
                ? close.payload.readUInt16BE(0) : 'none');
        });
    },
};

/* ------------------------------------------------------------------ */
/* The well-behaved client                                              */

/* Runs op (a promise factory) with the per-request bound; returns ms. */
async function timed(what, op) {
    const t0 = Date.now();
    await withTimeout(op(), GOOD_REQUEST_MS, what);
    return Date.now() - t0;
}

/*
 * PUT/GET on a keep-alive connection, GET on a fresh connection and a
 * publish received by a subscriber, round after round until stop.now.
 * Returns {rounds, maxMs}; throws on the first failure.
 */
async function goodClient(srv, stop) {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const wsUrl = `${srv.url.replace(/^http/, 'ws')}/v1/ws`;
    const sub = await WsClient.open(wsUrl);
    const pub = await WsClient.open(wsUrl);
    const topic = nextId('flood.good');
    let rounds = 0;
    let maxMs = 0;
    try {
        const ok = await sub.subscribe([topic]);
        assert.equal(ok.type, 'subscribed');
        while (!stop.now) {
            const key = nextId('good');
            const value = `value ${rounds}`;
            maxMs = Math.max(maxMs, await timed(`PUT ${key}`, async () => {
                const r = await httpRequest(srv.url, 'PUT', `/v1/kv/default/${key}`,
                    { body: value, agent });
                assert.ok(r.status === 204 || r.status === 200, `PUT: ${r.status}`);
            }));
            maxMs = Math.max(maxMs, await timed(`GET ${key}`, async () => {
                const r = await httpRequest(srv.url, 'GET', `/v1/kv/default/${key}`, { agent });
                assert.equal(r.status, 200, `GET: ${r.status} ${r.body}`);
                assert.equal(r.body.toString(), value);
            }));
            maxMs = Math.max(maxMs, await timed('GET on a new connection', async () => {
                const r = await httpRequest(srv.url, 'GET', `/v1/kv/default/${key}`,
                    { agent: false });
                assert.equal(r.status, 200, `fresh GET: ${r.status} ${r.body}`);
            }));
            maxMs = Math.max(maxMs, await timed('publish and receive', async () => {
                const data = `msg ${rounds}`;
                const r = await pub.call('publish', { topic, data });
                assert.notEqual(r.type, 'error', JSON.stringify(r));
                const m = await sub.takeMessage(topic);
                assert.equal(m.data, data);
            }));
            rounds += 1;
            await sleep(50);
        }
    } finally {
        agent.destroy();
        await sub.close().catch(() => {});
        await pub.close().catch(() => {});
    }
    return { rounds, maxMs };
}

/* ------------------------------------------------------------------ */

/* /metrics on a new connection (an idle pooled one may have been closed
 * by the server's idle_timeout_ms just before being reused). */
async function metricsOf(srv) {
    const r = await httpRequest(srv.url, 'GET', '/metrics', { agent: false });
    assert.equal(r.status, 200);
    return r.body.toString();
}

describe('a flood of bad clients', () => {
    let srv;

    before(async () => {
        srv = await startKvbusd(KVBUSD, [
            `--server.max_connections=${MAX_CONNECTIONS}`,
            `--server.header_timeout_ms=${HEADER_TIMEOUT_MS}`,
            '--server.body_timeout_ms=1000',
            `--server.max_header_bytes=${MAX_HEADER_BYTES}`,
            `--server.max_value_bytes=${MAX_VALUE_BYTES}`,
            '--server.log_level=warn',
        ]);
    });

    after(async () => {
        if (srv) {
            const exit = await srv.stop();
            assert.deepEqual(exit, { code: 0, signal: null }, srv.stderr());
        }
    });

    test('well-behaved clients are served throughout; each bad class gets its answer; RSS stays bounded',
        async (t) => {
            const rssStart = rssBytes(srv.pid);
            let rssMax = rssStart;
            const sampler = setInterval(() => {
                try { rssMax = Math.max(rssMax, rssBytes(srv.pid)); } catch { /* exited */ }
            }, 200);
            const stop = { now: false };
            const tallies = {};
            const workers = [];
            for (const [name, n] of Object.entries(WORKERS)) {
                tallies[name] = new Tally();
                for (let i = 0; i < n; i++) {
                    workers.push(badClients[name](srv.port, stop, tallies[name]));
                }
            }
            // Let the flood fill the server before the good client starts.
            await waitFor(async () => metricValue(await metricsOf(srv),
                'kvbus_http_connections_open') >= MAX_CONNECTIONS / 2,
            { timeoutMs: LIVENESS_MS, what: 'the flood to fill the server' });
            const good = goodClient(srv, stop);
            const timer = setTimeout(() => { stop.now = true; }, FLOOD_MS);
            let result;
            try {
                result = await good;
            } finally {
                stop.now = true;
                clearTimeout(timer);
                await Promise.allSettled(workers);
                clearInterval(sampler);
            }
            for (const w of await Promise.allSettled(workers)) {
                assert.equal(w.status, 'fulfilled', String(w.reason));
            }
            t.diagnostic(`good client: ${result.rounds} rounds, slowest request ${result.maxMs} ms`);
            t.diagnostic(`bad outcomes: ${JSON.stringify(Object.fromEntries(
                Object.entries(tallies).map(([k, v]) => [k, v.counts])))}`);
            t.diagnostic(`RSS start ${(rssStart / 1e6).toFixed(1)} MB, max ${(rssMax / 1e6).toFixed(1)} MB`);
            assert.ok(result.rounds > 0, 'the good client completed rounds during the flood');

            // 503: refused at max_connections with nothing to evict;
            // 'none': closed without an answer to make room (evicted).
            tallies.slowloris.check('slowloris', 408, [503, 'none']);
            assert.equal(tallies.slowloris.bodies[408].error, 'request_timeout');
            tallies.silent.check('silent', 'none', [503]);
            tallies.bigBody.check('oversize body', 413, [503, 'none']);
            assert.equal(tallies.bigBody.bodies[413].error, 'too_large');
            tallies.bigHeaders.check('oversize headers', 431, [503, 'none']);
            assert.equal(tallies.bigHeaders.bodies[431].error, 'headers_too_large');
            tallies.wsGarbage.check('garbage frames', 1002, ['refused 503', 'none']);

            assert.ok(rssMax - rssStart < RSS_GROWTH_MAX,
                `RSS grew by ${((rssMax - rssStart) / 1e6).toFixed(1)} MB`);
            const m = await metricsOf(srv);
            assert.ok(metricValue(m, 'kvbus_http_timeouts_total') > 0);
            assert.ok(metricValue(m, 'kvbus_http_rejected_total') > 0);
            // Every bad connection is gone; the server is back to normal.
            await waitFor(async () => metricValue(await metricsOf(srv),
                'kvbus_http_connections_open') <= 2,
            { timeoutMs: LIVENESS_MS, what: 'the bad connections to be closed' });
            const h = await httpRequest(srv.url, 'GET', '/healthz');
            assert.equal(h.status, 200);
        });
});

/* ------------------------------------------------------------------ */
/* One test per limit key                                               */

/* Starts a kvbusd with flags, runs fn(srv), stops it (expecting exit 0). */
async function withServer(flags, fn) {
    const srv = await startKvbusd(KVBUSD, ['--server.log_level=warn', ...flags]);
    try {
        await fn(srv);
    } finally {
        const exit = await srv.stop();
        assert.deepEqual(exit, { code: 0, signal: null }, srv.stderr());
    }
}

/* Writes data on a new connection; resolves with what the server sends
 * until it closes, and how long that took. */
function untilClosed(port, data, later) {
    return withTimeout(new Promise((resolve) => {
        const parts = [];
        const t0 = Date.now();
        const sock = net.connect({ host: '127.0.0.1', port });
        sock.on('connect', () => {
            if (data) sock.write(data);
            if (later) later(sock);
        });
        sock.on('data', (c) => parts.push(c));
        sock.on('error', () => {});
        sock.on('close', () => resolve({ data: Buffer.concat(parts), ms: Date.now() - t0 }));
    }), LIVENESS_MS, 'the server to close the connection');
}

describe('limit keys', () => {
    test('max_mget_keys: one key more is a 400 naming the limit', async () => {
        await withServer(['--server.max_mget_keys=3'], async (srv) => {
            const mget = (keys) => httpRequest(srv.url, 'POST', '/v1/kv/default?op=mget',
                { body: JSON.stringify({ keys }), headers: { 'content-type': 'application/json' } });
            const ok = await mget(['a', 'b', 'c']);
            assert.equal(ok.status, 200, ok.body.toString());
            const r = await mget(['a', 'b', 'c', 'd']);
            assert.equal(r.status, 400);
            const e = JSON.parse(r.body.toString());
            assert.equal(e.error, 'limit');
            assert.match(e.message, /at most 3 keys \(max_mget_keys\)/);
        });
    });

    test('max_page_keys: a larger limit= is a 400; the default page shrinks to it', async () => {
        await withServer(['--server.max_page_keys=5'], async (srv) => {
            for (let i = 0; i < 8; i++) {
                const r = await httpRequest(srv.url, 'PUT', `/v1/kv/default/k${i}`, { body: 'v' });
                assert.ok(r.status === 204 || r.status === 200);
            }
            const r = await httpRequest(srv.url, 'GET', '/v1/kv/default?limit=6');
            assert.equal(r.status, 400);
            assert.match(JSON.parse(r.body.toString()).message, /limit .*1 to 5/);
            const page = await httpRequest(srv.url, 'GET', '/v1/kv/default');
            assert.equal(page.status, 200);
            const body = JSON.parse(page.body.toString());
            assert.equal(body.keys.length, 5, page.body.toString());
            const five = await httpRequest(srv.url, 'GET', '/v1/kv/default?limit=5');
            assert.equal(five.status, 200);
        });
    });

    test('max_ws_frame_bytes: a larger frame gets too_large, four times larger closes 1009', async () => {
        await withServer(['--server.max_ws_frame_bytes=1024'], async (srv) => {
            const url = `${srv.url.replace(/^http/, 'ws')}/v1/ws`;
            const c = await WsClient.open(url);
            c.send({ op: 'publish', topic: 'big', data: 'z'.repeat(2000), id: 'big-1' });
            const f = await c.take(() => true, { what: 'the answer to a 2 KB frame' });
            assert.equal(f.type, 'error');
            assert.equal(f.error, 'too_large');
            const pong = await c.call('ping');
            assert.equal(pong.type, 'pong');
            c.send({ op: 'publish', topic: 'big', data: 'z'.repeat(5000) });
            const { code } = await withTimeout(c.closed, LIVENESS_MS, 'close after a 5 KB frame');
            assert.equal(code, 1009);
        });
    });

    test('max_subscriptions_per_conn: one topic more is a limit error', async () => {
        await withServer(['--server.max_subscriptions_per_conn=2'], async (srv) => {
            const url = `${srv.url.replace(/^http/, 'ws')}/v1/ws`;
            const c = await WsClient.open(url);
            try {
                const ok = await c.subscribe(['t.1', 't.2']);
                assert.equal(ok.type, 'subscribed');
                const r = await c.subscribe(['t.3']);
                assert.equal(r.type, 'error');
                assert.equal(r.error, 'limit');
                assert.match(r.message, /too many subscriptions/);
            } finally {
                await c.close();
            }
        });
    });

    test('header_timeout_ms: partial headers get 408 and the connection closes', async () => {
        await withServer(['--server.header_timeout_ms=500'], async (srv) => {
            const r = await untilClosed(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n');
            assert.equal(outcomeOf(r.data), 408);
            const e = errorBody(r.data);
            assert.equal(e.error, 'request_timeout');
            assert.match(e.message, /header_timeout_ms/);
            const quiet = await untilClosed(srv.port, null);
            assert.equal(quiet.data.length, 0, 'no answer to a connection that sent nothing');
        });
    });

    test('body_timeout_ms: a stalled body gets 408 and the connection closes', async () => {
        await withServer(['--server.body_timeout_ms=500'], async (srv) => {
            const r = await untilClosed(srv.port,
                'PUT /v1/kv/default/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789');
            assert.equal(outcomeOf(r.data), 408);
            assert.match(errorBody(r.data).message, /body_timeout_ms/);
        });
    });

    test('idle_timeout_ms: an idle keep-alive connection is closed quietly', async () => {
        await withServer(['--server.idle_timeout_ms=500'], async (srv) => {
            const r = await untilClosed(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
            const res = parseResponses(r.data);
            assert.equal(res.length, 1, 'one answer, then a quiet close');
            assert.equal(res[0].status, 200);
            const m = await metricsOf(srv);
            assert.ok(metricValue(m, 'kvbus_http_idle_closed_total') >= 1);
        });
    });

    test('idle_timeout_ms: a slow reader of a large answer is served; a stalled one is closed', async () => {
        const big = 8 * 1024 * 1024;
        await withServer(['--server.idle_timeout_ms=500', `--server.max_value_bytes=${big}`],
            async (srv) => {
                const value = Buffer.alloc(big, 0x62);
                const put = await httpRequest(srv.url, 'PUT', '/v1/kv/default/big',
                    { body: value, agent: false });
                assert.ok(put.status === 204 || put.status === 200, String(put.status));
                const request = 'GET /v1/kv/default/big HTTP/1.1\r\nHost: x\r\n\r\n';
                // Slow: a pause after every chunk, several idle_timeout_ms in all.
                const slow = await withTimeout(new Promise((resolve, reject) => {
                    const parts = [];
                    let got = 0;
                    const sock = net.connect({ host: '127.0.0.1', port: srv.port });
                    sock.on('connect', () => sock.write(request));
                    sock.on('data', (c) => {
                        parts.push(c);
                        got += c.length;
                        const res = parseResponses(Buffer.concat(parts));
                        if (res.length === 1) {
                            sock.destroy();
                            resolve(res[0]);
                            return;
                        }
                        sock.pause();
                        setTimeout(() => sock.resume(), 10);
                    });
                    sock.on('error', reject);
                    sock.on('close', () => reject(new Error(`closed after ${got} bytes`)));
                }), 60000, 'the slow read of 8 MiB');
                assert.equal(slow.status, 200);
                assert.equal(slow.body.length, big);
                // Stalled: never reads its answer.
                const before = metricValue(await metricsOf(srv), 'kvbus_http_idle_closed_total');
                const stalled = net.connect({ host: '127.0.0.1', port: srv.port });
                stalled.on('error', () => {});
                stalled.pause();
                stalled.write(request);
                await waitFor(async () => metricValue(await metricsOf(srv),
                    'kvbus_http_idle_closed_total') > before,
                { timeoutMs: LIVENESS_MS, what: 'the stalled reader to be closed' });
                stalled.destroy();
            });
    });

    test('max_connections: a new client evicts the longest-waiting slow one', async () => {
        await withServer(['--server.max_connections=4'], async (srv) => {
            const socks = [];
            const closedQuietly = [];
            for (let i = 0; i < 4; i++) {
                const s = net.connect({ host: '127.0.0.1', port: srv.port });
                s.on('error', () => {});
                s.resume(); // read, so that the server's close is seen
                await new Promise((r) => s.on('connect', r));
                s.write('GET /healthz HTTP/1.1\r\n'); // and never the rest
                closedQuietly.push(new Promise((r) => s.on('close', r)));
                socks.push(s);
            }
            // Past the server's minimum age for eviction (100 ms).
            await sleep(300);
            const r = await httpRequest(srv.url, 'GET', '/healthz', { agent: false });
            assert.equal(r.status, 200);
            await withTimeout(Promise.race(closedQuietly), LIVENESS_MS, 'an eviction');
            const m = await metricsOf(srv);
            assert.ok(metricValue(m, 'kvbus_http_evicted_total') >= 1);
            for (const s of socks) s.destroy();
        });
    });
});
