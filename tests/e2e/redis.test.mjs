// Cases only the redis backend has (SPEC sections 5, 8 and 9), checked from
// both sides: through kvbusd's HTTP API and directly in Redis.
//
// - layout: a key is `kvbus:<store>:<key>` holding the raw value bytes
//   (binary included), TTLs are native, counters are decimal text, listing
//   takes glob characters in the prefix literally, clear touches one store;
// - Nuxeo compatibility: keys written with redis-cli under a store's
//   prefix (as Nuxeo's RedisKeyValueStore writes them) are read, listed
//   and incremented by kvbusd, with their TTL;
// - outage under load: a private redis-server is killed and started again
//   on the same port under a PUT/GET loop against a private kvbusd: calls
//   fail fast with 503, Retry-After and a JSON error while it is down,
//   /readyz and kvbus_store_up say so, service resumes by itself and
//   kvbus_store_reconnects_total counts the reconnect;
// - timeout: a stopped (SIGSTOP) redis-server makes a call answer 503
//   `timeout` after op_timeout_ms; after SIGCONT service resumes.
//
// The first two use the kvbusd and redis-server of tests/e2e/run (KVBUS_URL,
// and REDIS_URL exported by its redis backend); the last two start their own
// redis-server (tests/tools/start-redis) and kvbusd (KVBUSD, default
// build/kvbusd), since they kill and stop the server. Bytes are read from
// Redis with a small RESP client (exact bytes); redis-cli (Debian
// redis-tools) lists keys and reads TTLs. With any other backend the file
// registers one skipped test.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
    BACKEND, XXH3, put, get, del, incr, setTtl, listAllKeys, request, text,
    json, uniqueStore, assertJsonError, sleep,
} from './lib.mjs';
import { startKvbusd, waitFor, metricValue } from './wslib.mjs';
import {
    outageHelpers, assertBackend503, assertServed, summary,
} from './outagelib.mjs';
import { parseResp } from './resplib.mjs';

const execFileP = promisify(execFile);

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KVBUSD = process.env.KVBUSD ?? path.join(ROOT, 'build/kvbusd');
const START_REDIS = path.join(ROOT, 'tests/tools/start-redis');
const REDIS_URL = process.env.REDIS_URL;

const OP_TIMEOUT_MS = 500;       // --store.r.op_timeout_ms of the private kvbusd
const ANSWER_LIMIT_MS = 3000;    // every call answers within this, even when down
const CALL_LIMIT_MS = 5000;      // a call still unanswered then is abandoned
const RECOVERY_LIMIT_MS = 10000; // service is back this long after the server
const LOAD_WORKERS = 4;
const LOAD_PAUSE_MS = 2;         // between two calls of one worker
const LOAD_PHASE_MS = 400;       // load before the kill, during, and after
const STOP_LIMIT_MS = 10000;     // a process exits this long after a signal
const TTL_N = 100;               // seconds; TTL checks allow for 2 s of delay

/* ------------------------------------------------------------------ */
/* Redis from the test's side                                           */

/* {host, port, db} of a redis:// URL without credentials. */
function redisAddr(url) {
    const u = new URL(url);
    return {
        host: u.hostname, port: Number(u.port || 6379),
        db: Number(u.pathname.slice(1) || 0),
    };
}

/*
 * A minimal Redis client over node:net: commands are arrays of strings or
 * Buffers (sent binary-safe), replies come back in order. An error reply
 * rejects.
 */
class Resp {
    static async connect(url) {
        const { host, port, db } = redisAddr(url);
        const c = new Resp(net.connect({ host, port }));
        await new Promise((resolve, reject) => {
            c.sock.once('connect', resolve);
            c.sock.once('error', reject);
        });
        if (db !== 0) await c.cmd('SELECT', String(db));
        return c;
    }

    constructor(sock) {
        this.sock = sock;
        this.buf = Buffer.alloc(0);
        this.waiting = [];
        sock.on('data', (chunk) => {
            this.buf = Buffer.concat([this.buf, chunk]);
            for (;;) {
                const r = this.waiting.length ? parseResp(this.buf, 0) : null;
                if (!r) break;
                this.buf = this.buf.subarray(r.end);
                const w = this.waiting.shift();
                if (r.value instanceof Error) w.reject(r.value);
                else w.resolve(r.value);
            }
        });
        sock.on('error', (e) => {
            for (const w of this.waiting.splice(0)) w.reject(e);
        });
    }

    cmd(...args) {
        const parts = [Buffer.from(`*${args.length}\r\n`)];
        for (const a of args) {
            const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
            parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
        }
        return new Promise((resolve, reject) => {
            this.waiting.push({ resolve, reject });
            this.sock.write(Buffer.concat(parts));
        });
    }

    close() {
        this.sock.destroy();
    }
}

/* Runs redis-cli -u url with args; resolves to its stdout. */
async function redisCli(url, ...args) {
    const { stdout } = await execFileP('redis-cli', ['-u', url, ...args],
        { timeout: CALL_LIMIT_MS, encoding: 'latin1' });
    return stdout;
}

/* The keys redis-cli --scan lists for a glob pattern, sorted. */
async function scanKeys(url, pattern) {
    const out = await redisCli(url, '--scan', '--pattern', pattern);
    return out.split('\n').filter((l) => l !== '').sort();
}

/* The redis-cli pattern matching every key of a store (store names hold no
 * glob characters). */
function storePattern(store) {
    return `kvbus:${store}:*`;
}

function ttlHeader(res) {
    const v = res.headers['x-kvbus-ttl'];
    return v === undefined ? undefined : Number(v);
}

function assertTtlNear(ttl, n, what) {
    assert.ok(Number.isInteger(ttl) && ttl >= n - 2 && ttl <= n,
        `${what}: TTL ${ttl}, expected about ${n}`);
}

/* ------------------------------------------------------------------ */
/* Private servers                                                      */

/* True while pid runs; a zombie (nobody reaped it yet) does not count. */
function alive(pid) {
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] !== 'Z';
    } catch {
        return false;
    }
}

/* Sends sig to pid, ignoring a process that is already gone. */
function signal(pid, sig) {
    try {
        process.kill(pid, sig);
    } catch {
        /* gone already */
    }
}

/*
 * Starts a redis-server with tests/tools/start-redis, in dir (a new
 * temporary directory when none) and on port (a free one when none), and
 * resolves to {url, pid, dir, port}.
 */
async function startRedis({ dir, port } = {}) {
    const args = port ? ['--port', String(port)] : [];
    if (dir) args.push(dir);
    const { stdout } = await execFileP(START_REDIS, args, { timeout: 20000 });
    const v = Object.fromEntries(stdout.trim().split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return {
        url: v.REDIS_URL, pid: Number(v.REDIS_PID), dir: v.REDIS_DIR,
        port: redisAddr(v.REDIS_URL).port,
    };
}

async function waitGone(pid) {
    await waitFor(() => !alive(pid),
        { timeoutMs: STOP_LIMIT_MS, what: `pid ${pid} to exit` });
}

const privateAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });

/*
 * One HTTP call to a private kvbusd at base. Resolves to {status, headers,
 * body, ms, start}, or to {error, ms, start} when the socket fails or
 * nothing answers within CALL_LIMIT_MS; never rejects.
 */
function call(base, method, p, { body } = {}) {
    const u = new URL(base);
    const start = performance.now();
    return new Promise((resolve) => {
        const headers = body === undefined ? {} : { 'content-length': Buffer.byteLength(body) };
        const req = http.request({
            host: u.hostname, port: Number(u.port), method, path: p, headers,
            agent: privateAgent,
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({
                status: res.statusCode, headers: res.headers,
                body: Buffer.concat(chunks), ms: performance.now() - start, start,
            }));
            res.on('error', (error) => resolve({ error, ms: performance.now() - start, start }));
        });
        req.setTimeout(CALL_LIMIT_MS, () => req.destroy(new Error(`no answer within ${CALL_LIMIT_MS} ms`)));
        req.on('error', (error) => resolve({ error, ms: performance.now() - start, start }));
        if (body !== undefined) req.write(body);
        req.end();
    });
}

const { storeMetric, readyz, startLoad } = outageHelpers({
    call, store: 'r', backend: 'redis', workers: LOAD_WORKERS, pauseMs: LOAD_PAUSE_MS,
});

/* ------------------------------------------------------------------ */

if (BACKEND !== 'redis') {
    test('redis backend: layout, Nuxeo keys, outage, timeout', {
        skip: 'needs the redis backend',
    }, () => {});
} else {
    describe('redis layout', () => {
        let rc;

        before(async () => {
            assert.ok(REDIS_URL, 'REDIS_URL is exported by tests/e2e/run');
            rc = await Resp.connect(REDIS_URL);
        });
        after(() => rc?.close());

        test('a key is kvbus:<store>:<key> holding the raw value bytes', async () => {
            const s = uniqueStore('layout');
            const all = Buffer.alloc(256);
            for (let i = 0; i < 256; i++) all[i] = i;
            assert.equal((await put(s, 'user/42', 'hello')).status, 204);
            assert.equal((await put(s, 'bin', all)).status, 204);
            assert.equal((await put(s, 'nul', Buffer.from([0]))).status, 204);
            assert.equal((await put(s, 'empty', '')).status, 204);
            assert.equal((await put(s, 'é ü', 'ünïcode')).status, 204);

            assert.deepEqual(await scanKeys(REDIS_URL, storePattern(s)), [
                `kvbus:${s}:bin`, `kvbus:${s}:empty`, `kvbus:${s}:nul`,
                `kvbus:${s}:user/42`,
                Buffer.from(`kvbus:${s}:é ü`).toString('latin1'),
            ].sort());
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:user/42`), Buffer.from('hello'));
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:bin`), all);
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:nul`), Buffer.from([0]));
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:empty`), Buffer.alloc(0));
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:é ü`), Buffer.from('ünïcode'));
            assert.equal(await rc.cmd('TYPE', `kvbus:${s}:bin`), 'string');

            // Nothing else is stored: no index, no metadata keys.
            assert.equal((await scanKeys(REDIS_URL, `*${s}*`)).length, 5);

            assert.equal((await del(s, 'user/42')).status, 204);
            assert.equal(await rc.cmd('EXISTS', `kvbus:${s}:user/42`), 0);
        });

        test('TTLs are native: SET EX, EXPIRE, PERSIST', async () => {
            const s = uniqueStore('ttl');
            const k = `kvbus:${s}:k`;
            assert.equal((await put(s, 'k', 'v', { ttl: TTL_N })).status, 204);
            assertTtlNear(Number(await redisCli(REDIS_URL, 'TTL', k)), TTL_N, 'after ?ttl=N');

            // A put without a TTL removes the earlier one.
            assert.equal((await put(s, 'k', 'v2')).status, 204);
            assert.equal(Number(await redisCli(REDIS_URL, 'TTL', k)), -1);

            assert.equal((await setTtl(s, 'k', 2 * TTL_N)).status, 204);
            assertTtlNear(await rc.cmd('TTL', k), 2 * TTL_N, 'after op=ttl');
            assert.equal((await setTtl(s, 'k', 0)).status, 204);
            assert.equal(await rc.cmd('TTL', k), -1, 'op=ttl&ttl=0 persists');
            assert.deepEqual(await rc.cmd('GET', k), Buffer.from('v2'));
        });

        test('a counter is stored as decimal text and keeps its TTL', async () => {
            const s = uniqueStore('incr');
            const k = `kvbus:${s}:n`;
            const r = await incr(s, 'n', 579);
            assert.equal(r.status, 200);
            assert.equal(text(r), '579');
            assert.deepEqual(await rc.cmd('GET', k), Buffer.from('579'));
            assert.equal(await rc.cmd('TYPE', k), 'string');

            assert.equal((await put(s, 'n', '-3', { ttl: TTL_N })).status, 204);
            assert.equal(text(await incr(s, 'n', 10)), '7');
            assert.deepEqual(await rc.cmd('GET', k), Buffer.from('7'));
            assertTtlNear(await rc.cmd('TTL', k), TTL_N, 'TTL after incr');

            // Not canonical decimal text: 409, nothing changed.
            assert.equal((await put(s, 'z', '01')).status, 204);
            assertJsonError(await incr(s, 'z', 1), 409, 'incr on "01"');
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}:z`), Buffer.from('01'));
        });

        test('glob characters in a listing prefix are taken literally', async () => {
            const s = uniqueStore('glob');
            const keys = ['a*b', 'a?b', 'a[b]', 'a\\b', 'axb'];
            for (const k of keys) assert.equal((await put(s, k, k)).status, 204);
            assert.deepEqual(await scanKeys(REDIS_URL, storePattern(s)),
                keys.map((k) => `kvbus:${s}:${k}`).sort());

            for (const [prefix, want] of [
                ['a*', ['a*b']], ['a?', ['a?b']], ['a[', ['a[b]']],
                ['a[b', ['a[b]']], ['a\\', ['a\\b']], ['ax', ['axb']],
                ['a', keys], ['*', []], ['?', []], ['[', []], ['\\', []],
            ]) {
                const { keys: got } = await listAllKeys(s, { prefix, limit: 2 });
                assert.deepEqual(got.sort(), [...want].sort(), `prefix ${JSON.stringify(prefix)}`);
            }
        });

        test('clear removes one store\'s keys and nothing else', async () => {
            const s = uniqueStore('clear');
            const other = `${s}x`; // kvbus:<s>x: does not start with kvbus:<s>:
            for (let i = 0; i < 30; i++) {
                assert.equal((await put(s, `k${i}`, 'v')).status, 204);
            }
            assert.equal((await put(other, 'k0', 'keep')).status, 204);
            await rc.cmd('SET', `kvbus:${s}`, 'not in the store');
            const r = await request('DELETE', `/v1/kv/${s}`);
            assert.equal(r.status, 204);
            assert.deepEqual(await scanKeys(REDIS_URL, storePattern(s)), []);
            assert.deepEqual(await rc.cmd('GET', `kvbus:${other}:k0`), Buffer.from('keep'));
            assert.deepEqual(await rc.cmd('GET', `kvbus:${s}`), Buffer.from('not in the store'));
            await rc.cmd('DEL', `kvbus:${s}`);
        });
    });

    describe('redis: keys written by Nuxeo', () => {
        let rc;

        before(async () => {
            assert.ok(REDIS_URL, 'REDIS_URL is exported by tests/e2e/run');
            rc = await Resp.connect(REDIS_URL);
        });
        after(() => rc?.close());

        test('keys set with redis-cli under the prefix are read, listed and counted', async () => {
            const s = uniqueStore('nuxeo');
            assert.equal(await redisCli(REDIS_URL, 'SET', `kvbus:${s}:k`, 'hello', 'EX', String(TTL_N)), 'OK\n');
            assert.equal(await redisCli(REDIS_URL, 'SET', `kvbus:${s}:n`, '41', 'EX', String(TTL_N)), 'OK\n');
            assert.equal(await redisCli(REDIS_URL, 'SET', `kvbus:${s}:plain`, 'kvbus'), 'OK\n');
            const bin = Buffer.from([0xff, 0x00, 0xfe, 0x0a]);
            assert.equal(await rc.cmd('SET', `kvbus:${s}:bin`, bin), 'OK');

            const g = await get(s, 'k');
            assert.equal(g.status, 200);
            assert.equal(text(g), 'hello');
            assert.equal(g.headers.etag, `"${XXH3.hello}"`);
            assertTtlNear(ttlHeader(g), TTL_N, 'X-Kvbus-TTL');

            const p = await get(s, 'plain');
            assert.equal(text(p), 'kvbus');
            assert.equal(p.headers.etag, `"${XXH3.kvbus}"`);
            assert.equal(ttlHeader(p), undefined);

            assert.deepEqual((await get(s, 'bin')).body, bin);

            const n = await incr(s, 'n', 1);
            assert.equal(n.status, 200);
            assert.equal(text(n), '42');
            assert.equal(await redisCli(REDIS_URL, 'GET', `kvbus:${s}:n`), '42\n');
            assertTtlNear(Number(await redisCli(REDIS_URL, 'TTL', `kvbus:${s}:n`)), TTL_N,
                'TTL of the counter after incr');
            assertTtlNear(ttlHeader(await get(s, 'n')), TTL_N, 'X-Kvbus-TTL of the counter');

            const { keys } = await listAllKeys(s);
            assert.deepEqual(keys.sort(), ['bin', 'k', 'n', 'plain']);

            // A key kvbusd reads also is one kvbusd writes over, in place.
            assert.equal((await put(s, 'k', 'from kvbus')).status, 204);
            assert.equal(await redisCli(REDIS_URL, 'GET', `kvbus:${s}:k`), 'from kvbus\n');
            assert.equal(Number(await redisCli(REDIS_URL, 'TTL', `kvbus:${s}:k`)), -1);
        });

        test('a key of another Redis type is a 400 (get) or 409 (incr), left alone', async () => {
            const s = uniqueStore('nuxeo-type');
            await rc.cmd('RPUSH', `kvbus:${s}:list`, 'x');
            assertJsonError(await get(s, 'list'), 400, 'GET of a list');
            assertJsonError(await incr(s, 'list', 1), 409, 'incr of a list');
            assert.equal(await rc.cmd('LLEN', `kvbus:${s}:list`), 1);
            await rc.cmd('DEL', `kvbus:${s}:list`);
        });
    });

    describe('redis outage and timeouts (private redis-server and kvbusd)', () => {
        let redis = null;
        let srv = null;
        let ownDir = null;
        let stopped = false; // redis was sent SIGSTOP and not SIGCONT yet

        before(async () => {
            ownDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-e2e-redis-outage.'));
            redis = await startRedis({ dir: ownDir });
            srv = await startKvbusd(KVBUSD, [
                '--server.log_level=warn',
                '--store.r.backend=redis',
                `--store.r.url=${redis.url}`,
                `--store.r.op_timeout_ms=${OP_TIMEOUT_MS}`,
            ]);
        });

        after(async () => {
            if (redis) {
                if (stopped) signal(redis.pid, 'SIGCONT');
                signal(redis.pid, 'SIGKILL');
            }
            if (srv && srv.proc.exitCode === null && srv.proc.signalCode === null) {
                srv.proc.kill('SIGKILL');
                await srv.exited;
            }
            privateAgent.destroy();
            if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true });
        });

        test('outage under load: 503 fast while down, service resumes by itself', async (t) => {
            const base = srv.url;
            assert.equal((await readyz(base)).status, 200);
            assert.equal(await storeMetric(base, 'kvbus_store_up'), 1);
            const reconnects0 = await storeMetric(base, 'kvbus_store_reconnects_total');
            assert.equal(reconnects0, 0, 'no reconnect yet');

            const load = startLoad(base);
            try {
                await sleep(LOAD_PHASE_MS);
                const before0 = load.calls.slice();
                assert.ok(before0.length > 0, 'load calls before the outage');
                for (const c of before0) assertServed(c, 'before the outage');

                // Kill: every call answers 503 while the server is gone.
                signal(redis.pid, 'SIGKILL');
                await waitGone(redis.pid);
                const down = performance.now();
                const first = await waitFor(async () => {
                    const r = await call(base, 'GET', '/v1/kv/r/probe');
                    return r.status === 503 ? r : null;
                }, { timeoutMs: ANSWER_LIMIT_MS, what: 'a 503 after the kill' });
                assertBackend503(first, 'GET while down');
                assert.equal(json(first).error, 'unavailable');
                assert.match(json(first).message, /store r/);
                assert.ok(json(first).message.includes(`127.0.0.1:${redis.port}`),
                    `message names the server: ${json(first).message}`);

                const rz = await readyz(base);
                assert.equal(rz.status, 503);
                assert.equal(rz.body.ready, false);
                assert.equal(rz.store.healthy, false);
                assert.equal(rz.body.stores.find((s) => s.name === 'default').healthy, true);
                assert.equal(await storeMetric(base, 'kvbus_store_up'), 0);
                const stores = json(await call(base, 'GET', '/v1/kv')).stores;
                assert.equal(stores.find((s) => s.name === 'r').healthy, false);

                await sleep(LOAD_PHASE_MS);
                const during = load.calls.filter((c) => c.start >= down);
                assert.ok(during.length > 0, 'load calls during the outage');
                for (const c of during) assertBackend503(c, `${c.op} during the outage`);

                // Start it again on the same port: back without a restart.
                redis = await startRedis({ dir: redis.dir, port: redis.port });
                const up = performance.now();
                await waitFor(async () => {
                    const p = await call(base, 'PUT', '/v1/kv/r/after', { body: 'ok' });
                    if (p.status !== 204) return false;
                    const g = await call(base, 'GET', '/v1/kv/r/after');
                    return g.status === 200 && text(g) === 'ok';
                }, { timeoutMs: RECOVERY_LIMIT_MS, intervalMs: 50, what: 'PUT/GET after the restart' });
                const back = performance.now();
                t.diagnostic(`served again ${Math.round(back - up)} ms after redis-server was up`);

                await sleep(LOAD_PHASE_MS);
                const tail = load.calls.filter((c) => c.start >= back);
                assert.ok(tail.length > 0, 'load calls after recovery');
                for (const c of tail) assertServed(c, 'after recovery');
            } finally {
                await load.stop();
            }
            for (const c of load.calls) {
                assert.ok(!c.error, `${c.op}: ${c.error}`);
                // 404: a GET whose PUT failed while down, answered after the
                // restart (the new server starts empty).
                const ok = [200, 204, 503].includes(c.status) ||
                    (c.status === 404 && c.op === 'GET' && c.expect === undefined);
                assert.ok(ok, `${c.op}: ${c.status} ${c.body}`);
                assert.ok(c.ms < ANSWER_LIMIT_MS, `${c.op} answered in ${Math.round(c.ms)} ms`);
            }
            const slowest503 = Math.max(...load.calls.filter((c) => c.status === 503).map((c) => c.ms));
            t.diagnostic(`load: ${summary(load.calls)}; slowest 503 in ${slowest503.toFixed(1)} ms`);

            const rz = await readyz(base);
            assert.equal(rz.status, 200);
            assert.equal(rz.store.healthy, true);
            assert.equal(await storeMetric(base, 'kvbus_store_up'), 1);
            assert.ok(await storeMetric(base, 'kvbus_store_reconnects_total') >= 1,
                'kvbus_store_reconnects_total counts the reconnect');
            assert.equal(srv.proc.exitCode, null, 'kvbusd is still running');
        });

        test('a stopped redis-server: 503 timeout after op_timeout_ms, then recovery', async () => {
            const base = srv.url;
            await waitFor(async () => (await readyz(base)).status === 200,
                { timeoutMs: RECOVERY_LIMIT_MS, what: 'store r healthy' });
            assert.equal((await call(base, 'PUT', '/v1/kv/r/slow', { body: 'v' })).status, 204);
            const reconnects0 = await storeMetric(base, 'kvbus_store_reconnects_total');

            signal(redis.pid, 'SIGSTOP');
            stopped = true;
            try {
                const g = await call(base, 'GET', '/v1/kv/r/slow');
                assertBackend503(g, 'GET from a stopped server');
                assert.equal(json(g).error, 'timeout');
                assert.ok(g.ms >= OP_TIMEOUT_MS * 0.8,
                    `answered after ${Math.round(g.ms)} ms, about op_timeout_ms (${OP_TIMEOUT_MS})`);
                assert.ok(g.ms < ANSWER_LIMIT_MS, `answered in ${Math.round(g.ms)} ms`);

                // Still stopped: later calls answer 503 in bounded time too.
                const g2 = await call(base, 'GET', '/v1/kv/r/slow');
                assertBackend503(g2, 'second GET from a stopped server');
                assert.ok(g2.ms < ANSWER_LIMIT_MS, `answered in ${Math.round(g2.ms)} ms`);
            } finally {
                signal(redis.pid, 'SIGCONT');
                stopped = false;
            }

            await waitFor(async () => {
                const r = await call(base, 'GET', '/v1/kv/r/slow');
                return r.status === 200 && text(r) === 'v';
            }, { timeoutMs: RECOVERY_LIMIT_MS, intervalMs: 50, what: 'GET after SIGCONT' });
            assert.equal((await readyz(base)).status, 200);
            assert.ok(await storeMetric(base, 'kvbus_store_reconnects_total') > reconnects0,
                'the connection dropped after the timeout was re-established');
        });

        test('kvbusd stayed up and exits 0 on SIGTERM', async () => {
            assert.equal(srv.proc.exitCode, null, 'kvbusd is still running');
            const { code, signal: sig } = await srv.stop(STOP_LIMIT_MS);
            assert.equal(sig, null, `kvbusd died of ${sig}: ${srv.stderr()}`);
            assert.equal(code, 0, `kvbusd exit status: ${srv.stderr()}`);
        });
    });
}
