// Cases only the postgres backend has (SPEC sections 5, 8 and 9), checked
// from both sides: through kvbusd's HTTP API and with psql on the table.
//
// - layout: the table kvbusd creates has Nuxeo's columns and types, an
//   index on ttl, each value in its documented column and ttl stored as
//   absolute epoch seconds;
// - Nuxeo compatibility: rows written with psql in Nuxeo's layout, in a
//   table created beforehand, are read, listed and counted by kvbusd;
// - outage under load: a private PostgreSQL is stopped and started again
//   under a PUT/GET loop against a private kvbusd: calls fail fast with
//   503 while it is down, /readyz and kvbus_store_up say so, and service
//   resumes by itself;
// - crash durability: every PUT acknowledged before a `kill -9` of a
//   private kvbusd is in the table afterwards.
//
// The first two use the kvbusd and PostgreSQL of tests/e2e/run (KVBUS_URL,
// and PG_URL exported by its postgres backend); the last two start their
// own kvbusd (KVBUSD, default build/kvbusd), and the outage case its own
// PostgreSQL too (tests/tools/start-postgres), since it stops the server.
// psql is the Debian postgresql-client. With any other backend the file
// registers one skipped test.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
    BACKEND, text, json, uniqueStore, kvPath,
    put, get, incr, listAllKeys, assertJsonError, sleep,
} from './lib.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KVBUSD = process.env.KVBUSD ?? path.join(ROOT, 'build/kvbusd');
const START_POSTGRES = path.join(ROOT, 'tests/tools/start-postgres');
const PG_URL = process.env.PG_URL;

const PSQL_TIMEOUT_MS = 10000;
const START_TIMEOUT_MS = 15000;     // a private kvbusd or PostgreSQL starting
const STOP_TIMEOUT_MS = 10000;      // a process exiting after a signal
const CALL_TIMEOUT_MS = 5000;       // one HTTP call of the load loops
const OUTAGE_ANSWER_MAX_MS = 3000;  // each call while PostgreSQL is down
const RECOVERY_MAX_MS = 10000;      // from PostgreSQL up again to 2xx
const LOAD_WORKERS = 4;             // concurrent PUT/GET loops
const CRASH_ACKS_BEFORE_KILL = 300; // PUTs acknowledged before kill -9
const CRASH_MAX_PUTS = 100000;      // bound of the crash PUT loops
const CRASH_WORKERS = 8;            // PUTs in flight in the crash case

const execFileP = promisify(execFile);

/* ------------------------------------------------------------------ */
/* psql                                                                 */

/* Runs one SQL statement with psql on url; resolves to its unaligned,
 * tuples-only output, trailing newline removed. */
async function psql(url, sql) {
    const { stdout } = await execFileP('psql',
        ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql],
        { timeout: PSQL_TIMEOUT_MS });
    return stdout.replace(/\n$/, '');
}

/* Runs a query on url and resolves to its rows as plain objects (through
 * json_agg, so bigint arrive as numbers and bytea as "\\x..." strings). */
async function psqlRows(url, query) {
    const out = await psql(url,
        `SELECT coalesce(json_agg(q), '[]') FROM (${query}) AS q`);
    return JSON.parse(out);
}

/* A SQL string literal. */
const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;

/* A quoted SQL identifier. */
const ident = (s) => `"${String(s).replace(/"/g, '""')}"`;

/* The default table of a store whose name is short enough not to be
 * shortened (docs/backends-postgres.md). */
const tableOf = (store) => `kv_${store}`;

/* The database's "now" in whole epoch seconds, as kvbusd computes it. */
async function dbNow(url) {
    return Number(await psql(url,
        'SELECT floor(extract(epoch FROM now()))::bigint'));
}

/* ------------------------------------------------------------------ */
/* Private processes                                                    */

/* A free TCP port on 127.0.0.1. */
function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.on('error', reject);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

/* True while pid runs; a zombie (nobody reaped it yet) does not count. */
function alive(pid) {
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] !== 'Z';
    } catch {
        return false;
    }
}

/* Resolves once pid has exited; rejects after timeoutMs. */
async function waitExit(pid, timeoutMs = STOP_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    while (alive(pid)) {
        if (Date.now() > deadline) {
            throw new Error(`pid ${pid} still running after ${timeoutMs} ms`);
        }
        await sleep(20);
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
 * Starts a PostgreSQL with tests/tools/start-postgres (a new cluster, or
 * the cluster in dir on port) and resolves to {url, pid, dir, port}.
 */
async function startPostgres({ dir, port } = {}) {
    const args = dir ? ['--dir', dir, '--port', String(port)] : [];
    const { stdout } = await execFileP(START_POSTGRES, args,
        { timeout: 2 * START_TIMEOUT_MS });
    const v = Object.fromEntries(stdout.trim().split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return { url: v.PG_URL, pid: Number(v.PG_PID), dir: v.PG_DIR, port: Number(v.PG_PORT) };
}

/* Fast shutdown of a PostgreSQL started by startPostgres; waits for it. */
async function stopPostgres(pg) {
    signal(pg.pid, 'SIGINT');
    await waitExit(pg.pid);
}

/*
 * Starts kvbusd on a free port with the given flags (KVBUS_* variables of
 * this environment dropped, so only the flags configure it), its output in
 * logFile, and resolves to {proc, port, exited} once /healthz answers.
 * exited stays null while it runs, then holds {code, signal}.
 */
async function startKvbusd(flags, logFile) {
    const port = await freePort();
    const env = Object.fromEntries(Object.entries(process.env)
        .filter(([k]) => !k.startsWith('KVBUS_')));
    const log = fs.openSync(logFile, 'w');
    const proc = spawn(KVBUSD,
        [`--server.listen=127.0.0.1:${port}`, '--server.log_level=info', ...flags],
        { env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const k = { proc, port, exited: null, logFile };
    proc.on('exit', (code, sig) => { k.exited = { code, signal: sig }; });
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
        if (k.exited) {
            throw new Error(`kvbusd exited at start: ${fs.readFileSync(logFile, 'utf8')}`);
        }
        try {
            const r = await call(port, 'GET', '/healthz', { timeoutMs: 1000 });
            if (r.status === 200) return k;
        } catch {
            /* not listening yet */
        }
        if (Date.now() > deadline) throw new Error('kvbusd did not answer /healthz');
        await sleep(50);
    }
}

/* Stops a kvbusd of startKvbusd (SIGKILL: nothing of it is checked). */
async function killKvbusd(k) {
    if (!k || k.exited) return;
    const gone = new Promise((r) => k.proc.once('exit', r));
    k.proc.kill('SIGKILL');
    await gone;
}

const privateAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });

/*
 * One HTTP call to 127.0.0.1:port (a private kvbusd). Resolves to
 * {status, headers, body, ms}; rejects on a socket error or after
 * timeoutMs.
 */
function call(port, method, p, { body, timeoutMs = CALL_TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
        const t0 = performance.now();
        const headers = body === undefined ? {} : { 'content-length': Buffer.byteLength(body) };
        const req = http.request({
            host: '127.0.0.1', port, method, path: p, headers, agent: privateAgent,
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({
                status: res.statusCode, headers: res.headers,
                body: Buffer.concat(chunks), ms: performance.now() - t0,
            }));
            res.on('error', reject);
        });
        req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
        req.on('error', reject);
        if (body !== undefined) req.write(body);
        req.end();
    });
}

/* The value of kvbus_store_up for store in /metrics, or undefined. */
async function storeUp(port, store) {
    const r = await call(port, 'GET', '/metrics');
    assert.equal(r.status, 200);
    const m = new RegExp(`^kvbus_store_up\\{store="${store}"[^}]*\\} (\\d+)$`, 'm')
        .exec(text(r));
    return m ? Number(m[1]) : undefined;
}

/* ------------------------------------------------------------------ */

if (BACKEND !== 'postgres') {
    test('postgres backend: layout, Nuxeo tables, outage, crash', {
        skip: 'needs the postgres backend',
    }, () => {});
} else {
    describe('postgres layout', () => {
        before(() => {
            assert.ok(PG_URL, 'PG_URL is exported by tests/e2e/run');
        });

        test('the table has Nuxeo\'s columns and types and an index on ttl', async () => {
            const s = uniqueStore('pglayout');
            assert.equal((await put(s, 'k', 'v')).status, 204);
            const cols = await psqlRows(PG_URL,
                'SELECT column_name, data_type FROM information_schema.columns ' +
                `WHERE table_schema = 'public' AND table_name = ${lit(tableOf(s))} ` +
                'ORDER BY ordinal_position');
            assert.deepEqual(cols.map((c) => [c.column_name, c.data_type]), [
                ['key', 'text'], ['long', 'bigint'], ['string', 'text'],
                ['bytes', 'bytea'], ['ttl', 'bigint'],
            ]);
            const pk = await psql(PG_URL,
                'SELECT a.attname FROM pg_index i JOIN pg_attribute a ' +
                'ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) ' +
                `WHERE i.indrelid = ${lit(ident(tableOf(s)))}::regclass AND i.indisprimary`);
            assert.equal(pk, 'key', 'primary key on key');
            const idx = await psqlRows(PG_URL,
                'SELECT indexname, indexdef FROM pg_indexes ' +
                `WHERE schemaname = 'public' AND tablename = ${lit(tableOf(s))}`);
            const ttlIdx = idx.find((i) => /\(ttl\)$/.test(i.indexdef));
            assert.ok(ttlIdx, `an index on ttl: ${JSON.stringify(idx)}`);
            assert.equal(ttlIdx.indexname, `${tableOf(s)}_ttl_idx`);
        });

        test('each value goes to its documented column and reads back unchanged', async () => {
            const s = uniqueStore('pgplace');
            const binary = Buffer.from([0x00, 0x01, 0xff, 0xfe]);
            // [key, value, column, what psql shows in that column]
            const cases = [
                ['n', '579', 'long', 579],
                ['neg', '-3', 'long', -3],
                ['txt', 'text', 'string', 'text'],
                ['lead0', '01', 'string', '01'],
                ['plus', '+1', 'string', '+1'],
                ['big', '9223372036854775808', 'string', '9223372036854775808'],
                ['empty', '', 'string', ''],
                ['utf8', 'h\u00e9llo \u2603', 'string', 'h\u00e9llo \u2603'],
                ['bin', binary, 'bytes', '\\x0001fffe'],
                ['nul', Buffer.from('a\0b'), 'bytes', '\\x610062'],
            ];
            for (const [k, v] of cases) {
                assert.equal((await put(s, k, v)).status, 204, `PUT ${k}`);
            }
            const rows = await psqlRows(PG_URL,
                `SELECT key, long, string, bytes, ttl FROM ${ident(tableOf(s))}`);
            const byKey = Object.fromEntries(rows.map((r) => [r.key, r]));
            for (const [k, v, col, shown] of cases) {
                const row = byKey[k];
                assert.ok(row, `row ${k} in the table`);
                for (const other of ['long', 'string', 'bytes']) {
                    assert.equal(row[other], other === col ? shown : null,
                        `${k}: column ${other} of ${JSON.stringify(row)}`);
                }
                assert.equal(row.ttl, null, `${k}: no ttl`);
                const g = await get(s, k);
                assert.equal(g.status, 200, `GET ${k}`);
                assert.deepEqual(g.body, Buffer.from(v), `GET ${k} bytes`);
            }
        });

        test('a put with a TTL stores ttl as absolute epoch seconds', async () => {
            const s = uniqueStore('pgttl');
            const N = 100;
            const before0 = Math.floor(Date.now() / 1000);
            assert.equal((await put(s, 'k', 'v', { ttl: N })).status, 204);
            const after0 = Math.ceil(Date.now() / 1000);
            const [row] = await psqlRows(PG_URL,
                `SELECT ttl FROM ${ident(tableOf(s))} WHERE key = 'k'`);
            assert.ok(row.ttl >= before0 + N - 1 && row.ttl <= after0 + N + 1,
                `ttl ${row.ttl} is about now + ${N} (${before0 + N}..${after0 + N})`);
            const now = await dbNow(PG_URL);
            assert.ok(row.ttl > now && row.ttl <= now + N,
                `ttl ${row.ttl} is within the database's now ${now} + ${N}`);
            // A put without a TTL removes it.
            assert.equal((await put(s, 'k', 'v')).status, 204);
            const [row2] = await psqlRows(PG_URL,
                `SELECT ttl FROM ${ident(tableOf(s))} WHERE key = 'k'`);
            assert.equal(row2.ttl, null);
        });
    });

    describe('postgres: a table written by Nuxeo', () => {
        const s = uniqueStore('nuxeo');
        const table = ident(tableOf(s));

        before(async () => {
            assert.ok(PG_URL, 'PG_URL is exported by tests/e2e/run');
            // Created before kvbusd ever opens the store, as Nuxeo would:
            // its key column is a bounded varchar, not text.
            await psql(PG_URL, `CREATE TABLE ${table} (key varchar(250) PRIMARY KEY, ` +
                'long bigint, string text, bytes bytea, ttl bigint)');
            await psql(PG_URL,
                `INSERT INTO ${table} (key, long, string, bytes, ttl) VALUES ` +
                "('n', 42, NULL, NULL, NULL), " +
                "('s', NULL, 'hello', NULL, NULL), " +
                "('zero', NULL, '0123', NULL, NULL), " +
                "('b', NULL, NULL, '\\x00ff10'::bytea, NULL), " +
                "('expired', NULL, 'old', NULL, floor(extract(epoch FROM now()))::bigint - 10), " +
                "('expired-n', 5, NULL, NULL, floor(extract(epoch FROM now()))::bigint - 10), " +
                "('future', NULL, 'later', NULL, floor(extract(epoch FROM now()))::bigint + 100), " +
                "('future-n', 7, NULL, NULL, floor(extract(epoch FROM now()))::bigint + 100)");
        });

        test('GET reads each column, hides expired rows and reports the TTL left', async () => {
            const expect = { n: '42', s: 'hello', zero: '0123', 'future-n': '7' };
            for (const [k, v] of Object.entries(expect)) {
                const g = await get(s, k);
                assert.equal(g.status, 200, `GET ${k}: ${text(g)}`);
                assert.equal(text(g), v, `GET ${k}`);
            }
            const b = await get(s, 'b');
            assert.equal(b.status, 200);
            assert.deepEqual(b.body, Buffer.from([0x00, 0xff, 0x10]));
            assert.equal(b.headers['x-kvbus-ttl'], undefined, 'no TTL on b');

            for (const k of ['expired', 'expired-n']) {
                assertJsonError(await get(s, k), 404, `GET ${k}`);
            }
            const f = await get(s, 'future');
            assert.equal(f.status, 200);
            assert.equal(text(f), 'later');
            const left = Number(f.headers['x-kvbus-ttl']);
            assert.ok(left >= 98 && left <= 100, `X-Kvbus-TTL ${f.headers['x-kvbus-ttl']}`);
        });

        test('keys lists the live rows only', async () => {
            const { keys } = await listAllKeys(s, { limit: 2 });
            assert.deepEqual([...keys].sort(),
                ['b', 'future', 'future-n', 'n', 's', 'zero']);
        });

        test('incr counts in long, keeps a TTL, and refuses string or bytes rows', async () => {
            const r = await incr(s, 'n', 5);
            assert.equal(r.status, 200, text(r));
            assert.equal(text(r), '47');
            const r2 = await incr(s, 'future-n', -10);
            assert.equal(text(r2), '-3');
            const r3 = await incr(s, 'expired-n', 2);
            assert.equal(text(r3), '2', 'an expired counter counts as absent');
            for (const k of ['s', 'zero', 'b']) {
                assertJsonError(await incr(s, k, 1), 409, `incr ${k}`);
            }
            const rows = await psqlRows(PG_URL,
                `SELECT key, long, string, bytes, ttl > floor(extract(epoch FROM now())) AS live_ttl FROM ${table} ` +
                "WHERE key IN ('n', 'future-n', 'expired-n', 's', 'zero', 'b') ORDER BY key");
            assert.deepEqual(rows, [
                { key: 'b', long: null, string: null, bytes: '\\x00ff10', live_ttl: null },
                { key: 'expired-n', long: 2, string: null, bytes: null, live_ttl: null },
                { key: 'future-n', long: -3, string: null, bytes: null, live_ttl: true },
                { key: 'n', long: 47, string: null, bytes: null, live_ttl: null },
                { key: 's', long: null, string: 'hello', bytes: null, live_ttl: null },
                { key: 'zero', long: null, string: '0123', bytes: null, live_ttl: null },
            ]);
        });

        test('a key longer than the table\'s varchar column is a 400, nothing stored', async () => {
            const long = 'k'.repeat(251);
            assertJsonError(await put(s, long, 'v'), 400, 'PUT of a 251-byte key');
            const n = await psql(PG_URL,
                `SELECT count(*) FROM ${table} WHERE length(key) > 250`);
            assert.equal(n, '0');
            assert.equal((await put(s, 'k'.repeat(250), 'v')).status, 204);
        });
    });

    describe('postgres outage under load', () => {
        let pg = null;
        let kv = null;
        let tmp = null;

        before(async () => {
            tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-e2e-pgoutage-'));
            pg = await startPostgres();
            kv = await startKvbusd([
                '--store.default.backend=postgres', `--store.default.url=${pg.url}`,
            ], path.join(tmp, 'kvbusd.log'));
        });

        after(async () => {
            await killKvbusd(kv);
            if (pg) {
                signal(pg.pid, 'SIGINT');
                await waitExit(pg.pid).catch(() => signal(pg.pid, 'SIGKILL'));
                fs.rmSync(pg.dir, { recursive: true, force: true });
            }
            if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
        });

        test('calls fail fast with 503 while PostgreSQL is down and succeed again once it is back', async (t) => {
            const port = kv.port;
            const results = [];   // {t0, t1, op, status, headers, body, error}
            let stop = false;

            // Each worker alternates a PUT and a GET of its own key.
            const worker = async (w) => {
                for (let i = 0; !stop; i++) {
                    const key = `w${w}`;
                    const op = i % 2 === 0 ? 'PUT' : 'GET';
                    const t0 = Date.now();
                    const rec = { t0, op };
                    try {
                        const r = await call(port, op, kvPath('default', key),
                            op === 'PUT' ? { body: `v${i}` } : {});
                        Object.assign(rec, { status: r.status, headers: r.headers, body: r.body });
                    } catch (e) {
                        rec.error = e.message;
                    }
                    rec.t1 = Date.now();
                    results.push(rec);
                    // A 503 comes back at once: pace the loop so the outage
                    // does not turn into a busy loop on 2 cores.
                    if (rec.status !== 204 && rec.status !== 200) await sleep(10);
                }
            };
            const workers = Array.from({ length: LOAD_WORKERS }, (_, w) => worker(w));
            try {
                await sleep(500);
                const warm = results.slice();
                assert.ok(warm.length > 0, 'calls answered before the outage');
                assert.ok(warm.every((r) => r.status === 204 || r.status === 200),
                    `before the outage: ${summary(warm)}`);
                assert.equal((await call(port, 'GET', '/readyz')).status, 200);
                assert.equal(await storeUp(port, 'default'), 1);
                assert.equal((await call(port, 'PUT', kvPath('default', 'before'),
                    { body: 'kept' })).status, 204);

                // Stop PostgreSQL (fast shutdown) under load.
                await stopPostgres(pg);
                const down = Date.now();
                await sleep(1500);
                const during = results.filter((r) => r.t0 >= down);
                assert.ok(during.length >= LOAD_WORKERS, `calls during the outage: ${during.length}`);
                for (const r of during) {
                    assert.equal(r.error, undefined, `${r.op} during the outage: ${r.error}`);
                    assert.equal(r.status, 503, `${r.op} during the outage: ${r.status} ${r.body}`);
                    assert.ok(r.t1 - r.t0 < OUTAGE_ANSWER_MAX_MS,
                        `${r.op} answered in ${r.t1 - r.t0} ms`);
                    assert.ok(r.headers['retry-after'], `Retry-After on ${r.op}`);
                    assert.match(String(r.headers['content-type']), /^application\/json\b/);
                    const e = JSON.parse(r.body.toString());
                    assert.equal(e.error, 'unavailable');
                    assert.ok(typeof e.message === 'string' && e.message.length > 0);
                }
                t.diagnostic(`${during.length} calls during the outage, all 503, ` +
                    `slowest ${Math.max(...during.map((r) => r.t1 - r.t0))} ms`);
                const rz = await call(port, 'GET', '/readyz');
                assert.equal(rz.status, 503);
                const ready = json(rz);
                assert.equal(ready.ready, false);
                const st = ready.stores.find((x) => x.name === 'default');
                assert.deepEqual(st, { name: 'default', backend: 'postgres', healthy: false });
                assert.equal(await storeUp(port, 'default'), 0);
                assert.equal(kv.exited, null, 'kvbusd is still running');

                // Start it again on the same port and data; no kvbusd restart.
                const old = pg;
                pg = await startPostgres({ dir: old.dir, port: old.port });
                const up = Date.now();
                let back = null;
                while (Date.now() - up < RECOVERY_MAX_MS) {
                    const p = await call(port, 'PUT', kvPath('default', 'after'), { body: 'ok' });
                    if (p.status === 204) {
                        back = Date.now();
                        break;
                    }
                    await sleep(50);
                }
                assert.ok(back, `PUT succeeded within ${RECOVERY_MAX_MS} ms of the restart`);
                const g = await call(port, 'GET', kvPath('default', 'after'));
                assert.equal(g.status, 200);
                assert.equal(text(g), 'ok');
                await sleep(1000);
                const tail = results.filter((r) => r.t0 >= back + 200);
                assert.ok(tail.length > 0, 'load calls after recovery');
                assert.ok(tail.every((r) => r.status === 204 || r.status === 200),
                    `after recovery: ${summary(tail)}`);
                assert.equal((await call(port, 'GET', '/readyz')).status, 200);
                assert.equal(await storeUp(port, 'default'), 1);
                // What was written before the outage is still there.
                const kept = await call(port, 'GET', kvPath('default', 'before'));
                assert.equal(kept.status, 200);
                assert.equal(text(kept), 'kept');
                // Informational: how long the service took to come back.
                t.diagnostic(`served again ${back - up} ms after PostgreSQL was up`);
            } finally {
                stop = true;
                await Promise.all(workers);
            }
            const bad = results.filter((r) => r.error ||
                ![200, 204, 503].includes(r.status));
            assert.deepEqual(bad.map((r) => `${r.op} ${r.status ?? r.error}`), [],
                'every call got 200/204 or 503');
            assert.equal(kv.exited, null, 'kvbusd is still running');
        });
    });

    describe('postgres crash durability', () => {
        let kv = null;
        let tmp = null;

        before(async () => {
            assert.ok(PG_URL, 'PG_URL is exported by tests/e2e/run');
            tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-e2e-pgcrash-'));
            kv = await startKvbusd([
                '--store.default.backend=postgres', `--store.default.url=${PG_URL}`,
            ], path.join(tmp, 'kvbusd.log'));
        });

        after(async () => {
            await killKvbusd(kv);
            if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
        });

        test('every PUT acknowledged before kill -9 is in the table', async (t) => {
            const s = uniqueStore('crash');
            const port = kv.port;
            // Values of each placement: long, string and bytes.
            const valueOf = (i) => (i % 3 === 0 ? String(i * 7)
                : i % 3 === 1 ? `value ${i}` : Buffer.from([0, i & 0xff, (i >> 8) & 0xff]));
            const acked = new Map();  // key -> value bytes
            const early = [];         // failures before the kill
            let next = 0;
            let killed = false;
            let failedAfterKill = 0;
            const worker = async () => {
                while (!killed && next < CRASH_MAX_PUTS) {
                    const i = next++;
                    const v = Buffer.from(valueOf(i));
                    try {
                        const r = await call(port, 'PUT', kvPath(s, `k${i}`), { body: v });
                        if (r.status === 204) acked.set(`k${i}`, v);
                        else if (!killed) early.push(`PUT k${i}: ${r.status} ${r.body}`);
                    } catch (e) {
                        if (killed) failedAfterKill += 1;
                        else early.push(`PUT k${i}: ${e.message}`);
                    }
                    if (!killed && (acked.size >= CRASH_ACKS_BEFORE_KILL || early.length)) {
                        killed = true;
                        kv.proc.kill('SIGKILL');
                    }
                }
            };
            await Promise.all(Array.from({ length: CRASH_WORKERS }, worker));
            assert.deepEqual(early, [], 'PUTs before the kill');
            await new Promise((r) => (kv.exited ? r() : kv.proc.once('exit', r)));
            assert.equal(kv.exited.signal, 'SIGKILL');
            assert.ok(acked.size >= CRASH_ACKS_BEFORE_KILL);
            t.diagnostic(`${acked.size} PUTs acknowledged, ${failedAfterKill} cut by the kill`);

            const rows = await psqlRows(PG_URL,
                'SELECT key, encode(coalesce(convert_to(string, \'UTF8\'), ' +
                "convert_to(long::text, 'UTF8'), bytes), 'hex') AS v, " +
                `long IS NOT NULL AS is_long, bytes IS NOT NULL AS is_bytes FROM ${ident(tableOf(s))}`);
            const inTable = new Map(rows.map((r) => [r.key, r]));
            const missing = [];
            for (const [k, v] of acked) {
                const row = inTable.get(k);
                if (!row) {
                    missing.push(k);
                    continue;
                }
                assert.equal(row.v, v.toString('hex'), `value of ${k}`);
                const i = Number(k.slice(1));
                assert.equal(row.is_long, i % 3 === 0, `${k} in long`);
                assert.equal(row.is_bytes, i % 3 === 2, `${k} in bytes`);
            }
            assert.deepEqual(missing, [], 'acknowledged PUTs missing from the table');
            // Nothing was stored that was never sent.
            for (const k of inTable.keys()) {
                assert.ok(Number(k.slice(1)) < next, `unexpected row ${k}`);
            }
        });
    });
}

/* "status xN, ..." of a list of load results, for assertion messages. */
function summary(rs) {
    const n = new Map();
    for (const r of rs) {
        const k = `${r.op} ${r.status ?? r.error}`;
        n.set(k, (n.get(k) ?? 0) + 1);
    }
    return [...n].map(([k, c]) => `${k} x${c}`).join(', ');
}
