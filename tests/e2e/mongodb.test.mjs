// Cases only the mongodb backend has (SPEC sections 5, 8 and 9), checked
// from both sides: through kvbusd's HTTP API and with a raw MongoDB client
// on the collection.
//
// - layout: a store is collection kv.<store> of documents {_id, v, ttl},
//   v an Int64 for a canonical integer, a string for other UTF-8 and
//   binary otherwise, ttl an absolute Date, and a TTL index on ttl with
//   expireAfterSeconds 0;
// - Nuxeo compatibility: documents written directly in Nuxeo's layout are
//   read, listed, compared and counted by kvbusd; expired ones are absent
//   at once (the server's TTL monitor has not removed them yet);
// - listing takes regex metacharacters in the prefix literally; clear
//   empties one collection and keeps its index;
// - outage: a private test double stopped with SIGSTOP makes calls answer
//   503 within about op_timeout_ms, then at once, with /readyz and
//   kvbus_store_up saying so, and service comes back after SIGCONT; killed
//   and started again on the same port under a PUT/GET load, kvbusd serves
//   again by itself and kvbus_store_reconnects_total counts it.
//
// The first three use the kvbusd of tests/e2e/run (KVBUS_URL) and the
// server it exports as MONGO_URL: the wire-protocol double, or a real
// MongoDB when the run has KVBUS_TEST_MONGO_URL. The raw client below speaks
// OP_MSG without authentication or TLS: with a URL that needs either,
// those tests are skipped (and say why). The outage tests start their own
// double (tests/tools/start-mongo-double) and kvbusd (KVBUSD, default
// build/kvbusd), since they stop the server; a real server is never
// stopped. With any other backend the file registers one skipped test.

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
import { BSON, Binary, Long } from 'bson';

import {
    BACKEND, XXH3, put, get, del, incr, setTtl, listAllKeys, request, text,
    json, uniqueStore, assertJsonError, sleep,
} from './lib.mjs';
import {
    startKvbusd, waitFor, metricValue, httpRequest, withTimeout,
} from './wslib.mjs';
import {
    outageHelpers, assertBackend503, assertServed, summary,
} from './outagelib.mjs';

const execFileP = promisify(execFile);

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KVBUSD = process.env.KVBUSD ?? path.join(ROOT, 'build/kvbusd');
const START_DOUBLE = path.join(ROOT, 'tests/tools/start-mongo-double');
const MONGO_URL = process.env.MONGO_URL;

const OP_TIMEOUT_MS = 500;       // --store.m.op_timeout_ms of the private kvbusd
const ANSWER_LIMIT_MS = 3000;    // every call answers within this, even when down
const FAST_LIMIT_MS = 250;       // a call refused while down answers within this
const CALL_LIMIT_MS = 5000;      // a call still unanswered then is abandoned
const RECOVERY_LIMIT_MS = 15000; // service is back this long after the server
const LOAD_WORKERS = 4;
const LOAD_PAUSE_MS = 2;         // between two calls of one worker
const LOAD_PHASE_MS = 600;       // load before the kill, during, and after
const STOP_LIMIT_MS = 10000;     // a process exits this long after a signal
const TTL_N = 100;               // seconds; TTL checks allow for 2 s of delay
const WIRE_TIMEOUT_MS = 5000;    // one command of the raw client

/* ------------------------------------------------------------------ */
/* A raw MongoDB client: OP_MSG over node:net, documents through bson   */

const OP_MSG = 2013;
const MSG_HEADER_BYTES = 16;

/*
 * {host, port, db, why} of a mongodb:// URL; why is set when the raw client
 * cannot use it (credentials, TLS, SRV).
 */
function mongoAddr(url) {
    const m = /^mongodb(\+srv)?:\/\/(?:([^@/]*)@)?([^/?]+)\/?([^?]*)(?:\?(.*))?$/.exec(url ?? '');
    if (!m) return { why: `not a mongodb:// URL: ${url}` };
    const [, srv, cred, hosts, db, query = ''] = m;
    const first = hosts.split(',')[0];
    const colon = first.lastIndexOf(':');
    const addr = {
        host: colon > 0 ? first.slice(0, colon) : first,
        port: colon > 0 ? Number(first.slice(colon + 1)) : 27017,
        db: decodeURIComponent(db || 'kvbus'),
    };
    if (srv) addr.why = 'the raw test client does not resolve mongodb+srv URLs';
    else if (cred) addr.why = 'the raw test client does not authenticate';
    else if (/(^|&)(tls|ssl)=true/i.test(query)) addr.why = 'the raw test client does not speak TLS';
    return addr;
}

/* One connection; command() sends a document and resolves to the reply. */
class MongoWire {
    static connect({ host, port }) {
        return withTimeout(new Promise((resolve, reject) => {
            const sock = net.connect({ host, port });
            sock.once('connect', () => resolve(new MongoWire(sock)));
            sock.once('error', reject);
        }), WIRE_TIMEOUT_MS, `connect to ${host}:${port}`);
    }

    constructor(sock) {
        this.sock = sock;
        this.buf = Buffer.alloc(0);
        this.next = 1;
        this.waiting = new Map();
        sock.on('data', (chunk) => this.onData(chunk));
        sock.on('error', (e) => {
            for (const w of this.waiting.values()) w.reject(e);
            this.waiting.clear();
        });
    }

    onData(chunk) {
        this.buf = Buffer.concat([this.buf, chunk]);
        while (this.buf.length >= 4 && this.buf.length >= this.buf.readInt32LE(0)) {
            const len = this.buf.readInt32LE(0);
            const msg = this.buf.subarray(0, len);
            this.buf = this.buf.subarray(len);
            const to = msg.readInt32LE(8);
            const w = this.waiting.get(to);
            if (!w) continue;
            this.waiting.delete(to);
            if (msg.readInt32LE(12) !== OP_MSG || msg[MSG_HEADER_BYTES + 4] !== 0) {
                w.reject(new Error('unexpected reply opcode or section'));
                continue;
            }
            // Keep BSON types visible: Int64 stays Long, binary stays Binary.
            w.resolve(BSON.deserialize(msg.subarray(MSG_HEADER_BYTES + 5),
                { promoteLongs: false, promoteBuffers: false, promoteValues: false }));
        }
    }

    /* Runs cmd on db; resolves to the reply, rejects when ok is not 1. */
    async command(db, cmd) {
        const body = BSON.serialize({ ...cmd, $db: db });
        const head = Buffer.alloc(MSG_HEADER_BYTES + 5);
        const id = this.next++;
        head.writeInt32LE(MSG_HEADER_BYTES + 5 + body.length, 0);
        head.writeInt32LE(id, 4);
        head.writeInt32LE(0, 8);
        head.writeInt32LE(OP_MSG, 12);
        head.writeUInt32LE(0, 16); // flagBits
        head[20] = 0;              // section kind 0: the body
        const reply = await withTimeout(new Promise((resolve, reject) => {
            this.waiting.set(id, { resolve, reject });
            this.sock.write(Buffer.concat([head, body]));
        }), WIRE_TIMEOUT_MS, `${Object.keys(cmd)[0]} on ${db}`);
        if (Number(reply.ok) !== 1) {
            throw new Error(`${Object.keys(cmd)[0]}: ${reply.errmsg} (${reply.code})`);
        }
        return reply;
    }

    /* Every document of db.coll matching filter (one batch is enough here). */
    async find(db, coll, filter = {}) {
        const r = await this.command(db, { find: coll, filter, batchSize: 10000 });
        return r.cursor.firstBatch;
    }

    close() {
        this.sock.destroy();
    }
}

/* The value of a BSON number (Int32, Long, Double) as a JS number. */
const num = (v) => (typeof v === 'number' ? v : Number(v.valueOf()));

/* The BSON type name of a value as deserialized with promoteValues off. */
function bsonType(v) {
    if (typeof v === 'string') return 'string';
    if (v instanceof Date) return 'date';
    return v?._bsontype ?? typeof v;
}

function ttlHeader(res) {
    const v = res.headers['x-kvbus-ttl'];
    return v === undefined ? undefined : Number(v);
}

function assertTtlNear(ttl, n, what) {
    assert.ok(Number.isInteger(ttl) && ttl >= n - 2 && ttl <= n,
        `${what}: TTL ${ttl}, expected about ${n}`);
}

/* Asserts a Date is about n seconds from now. */
function assertDateIn(d, n, what) {
    assert.ok(d instanceof Date, `${what}: ${d} is a Date`);
    const s = (d.getTime() - Date.now()) / 1000;
    assert.ok(s > n - 3 && s <= n + 1, `${what}: expires in ${s} s, expected about ${n}`);
}

/* ------------------------------------------------------------------ */
/* The private double and kvbusd of the outage tests                    */

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

/* Starts the double in dir (on port when given) and resolves to
 * {url, pid, port, dir}. */
async function startDouble({ dir, port } = {}) {
    const args = port ? ['--port', String(port), dir] : [dir];
    const { stdout } = await execFileP(START_DOUBLE, args, { timeout: 20000 });
    const v = Object.fromEntries(stdout.trim().split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return { url: v.MONGO_URL, pid: Number(v.MONGO_PID), port: Number(v.MONGO_PORT), dir: v.MONGO_DIR };
}

const privateAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });

/*
 * One HTTP call to a private kvbusd at base (wslib's httpRequest, bounded
 * by CALL_LIMIT_MS). Resolves to {status, headers, body, ms, start}, or to
 * {error, ms, start}; never rejects.
 */
async function call(base, method, p, { body } = {}) {
    const start = performance.now();
    try {
        const r = await withTimeout(httpRequest(base, method, p, { body, agent: privateAgent }),
            CALL_LIMIT_MS, `${method} ${p}`);
        return { ...r, ms: performance.now() - start, start };
    } catch (error) {
        return { error, ms: performance.now() - start, start };
    }
}

const { storeMetric, readyz, startLoad } = outageHelpers({
    call, store: 'm', backend: 'mongodb', workers: LOAD_WORKERS, pauseMs: LOAD_PAUSE_MS,
});

/* ------------------------------------------------------------------ */

const addr = mongoAddr(MONGO_URL);
const rawSkip = !MONGO_URL ? 'MONGO_URL is not set (run through tests/e2e/run)'
    : addr.why ? `${addr.why} (MONGO_URL ${MONGO_URL.replace(/\/\/[^@/]*@/, '//***@')})`
        : false;

if (BACKEND !== 'mongodb') {
    test('mongodb backend: layout, Nuxeo documents, outage', {
        skip: 'needs the mongodb backend',
    }, () => {});
} else {
    describe('mongodb layout', { skip: rawSkip }, () => {
        let mc;

        before(async () => {
            mc = await MongoWire.connect(addr);
        });
        after(() => mc?.close());

        test('a store is collection kv.<store> of {_id, v} with v typed by the value', async () => {
            const s = uniqueStore('layout');
            const all = Buffer.alloc(256);
            for (let i = 0; i < 256; i++) all[i] = i;
            // [key, value, BSON type of v, v as the raw client sees it]
            const cases = [
                ['n', '579', 'Long', 579],
                ['neg', '-3', 'Long', -3],
                ['min', '-9223372036854775808', 'Long', '-9223372036854775808'],
                ['txt', 'text', 'string', 'text'],
                ['lead0', '01', 'string', '01'],
                ['plus', '+1', 'string', '+1'],
                ['big', '9223372036854775808', 'string', '9223372036854775808'],
                ['empty', '', 'string', ''],
                ['utf8', 'h\u00e9llo \u2603', 'string', 'h\u00e9llo \u2603'],
                ['bin', all, 'Binary', all],
                ['nul', Buffer.from('a\0b'), 'Binary', Buffer.from('a\0b')],
                ['user/42 \u00e9', 'slash', 'string', 'slash'],
            ];
            for (const [k, v] of cases) {
                assert.equal((await put(s, k, v)).status, 204, `PUT ${k}`);
            }
            const docs = await mc.find(addr.db, `kv.${s}`);
            assert.equal(docs.length, cases.length, 'one document per key');
            const byId = Object.fromEntries(docs.map((d) => [d._id, d]));
            for (const [k, v, type, shown] of cases) {
                const d = byId[k];
                assert.ok(d, `document ${k}`);
                assert.deepEqual(Object.keys(d).sort(), ['_id', 'v'], `${k}: only _id and v`);
                assert.equal(bsonType(d.v), type, `${k}: type of v`);
                if (type === 'Long') assert.equal(d.v.toString(), String(shown), `${k}: v`);
                else if (type === 'Binary') {
                    assert.equal(d.v.sub_type, Binary.SUBTYPE_DEFAULT, `${k}: binary subtype`);
                    assert.deepEqual(Buffer.from(d.v.buffer), shown, `${k}: v`);
                } else assert.equal(d.v, shown, `${k}: v`);
                const g = await get(s, k);
                assert.equal(g.status, 200, `GET ${k}`);
                assert.deepEqual(g.body, Buffer.from(v), `GET ${k} bytes`);
            }
            assert.equal((await del(s, 'n')).status, 204);
            assert.equal((await mc.find(addr.db, `kv.${s}`, { _id: 'n' })).length, 0);
        });

        test('ttl is an absolute Date; a put without one and ttl=0 remove it', async () => {
            const s = uniqueStore('ttl');
            const coll = `kv.${s}`;
            assert.equal((await put(s, 'k', 'v', { ttl: TTL_N })).status, 204);
            let [d] = await mc.find(addr.db, coll, { _id: 'k' });
            assertDateIn(d.ttl, TTL_N, 'after ?ttl=N');
            assertTtlNear(ttlHeader(await get(s, 'k')), TTL_N, 'X-Kvbus-TTL');

            assert.equal((await put(s, 'k', 'v2')).status, 204);
            [d] = await mc.find(addr.db, coll, { _id: 'k' });
            assert.equal(d.ttl, undefined, 'a put without a TTL removes it');

            assert.equal((await setTtl(s, 'k', 2 * TTL_N)).status, 204);
            [d] = await mc.find(addr.db, coll, { _id: 'k' });
            assertDateIn(d.ttl, 2 * TTL_N, 'after op=ttl');
            assert.equal((await setTtl(s, 'k', 0)).status, 204);
            [d] = await mc.find(addr.db, coll, { _id: 'k' });
            assert.equal(d.ttl, undefined, 'op=ttl&ttl=0 removes it');
            assert.equal(d.v, 'v2');
        });

        test('the collection has a TTL index on ttl with expireAfterSeconds 0', async () => {
            const s = uniqueStore('index');
            assert.equal((await put(s, 'k', 'v')).status, 204);
            // Created when the store opens, asynchronously.
            const idx = await waitFor(async () => {
                const r = await mc.command(addr.db, { listIndexes: `kv.${s}` });
                return r.cursor.firstBatch.find((i) => i.key?.ttl !== undefined);
            }, { timeoutMs: 5000, what: `a ttl index on kv.${s}` });
            assert.deepEqual(Object.keys(idx.key), ['ttl']);
            assert.equal(num(idx.key.ttl), 1);
            assert.equal(num(idx.expireAfterSeconds), 0);
            // clear empties the collection and keeps the index.
            assert.equal((await request('DELETE', `/v1/kv/${s}`)).status, 204);
            assert.deepEqual(await mc.find(addr.db, `kv.${s}`), []);
            const after0 = await mc.command(addr.db, { listIndexes: `kv.${s}` });
            assert.ok(after0.cursor.firstBatch.some((i) => i.key?.ttl !== undefined),
                'the TTL index survives clear');
        });

        test('a counter is an Int64 that incr updates in place, keeping the TTL', async () => {
            const s = uniqueStore('incr');
            const coll = `kv.${s}`;
            assert.equal(text(await incr(s, 'n', 579)), '579');
            let [d] = await mc.find(addr.db, coll, { _id: 'n' });
            assert.equal(bsonType(d.v), 'Long');
            assert.equal(d.v.toString(), '579');
            assert.equal(d.ttl, undefined);

            assert.equal((await put(s, 'n', '-3', { ttl: TTL_N })).status, 204);
            assert.equal(text(await incr(s, 'n', 10)), '7');
            [d] = await mc.find(addr.db, coll, { _id: 'n' });
            assert.equal(d.v.toString(), '7');
            assertDateIn(d.ttl, TTL_N, 'TTL after incr');

            // Not an integer: 409, nothing changed.
            assert.equal((await put(s, 'z', '01')).status, 204);
            assertJsonError(await incr(s, 'z', 1), 409, 'incr on "01"');
            [d] = await mc.find(addr.db, coll, { _id: 'z' });
            assert.equal(d.v, '01');
        });

        test('clear removes one store\'s documents and nothing else', async () => {
            const s = uniqueStore('clear');
            const other = `${s}x`;
            for (let i = 0; i < 30; i++) {
                assert.equal((await put(s, `k${i}`, 'v')).status, 204);
            }
            assert.equal((await put(other, 'k0', 'keep')).status, 204);
            assert.equal((await request('DELETE', `/v1/kv/${s}`)).status, 204);
            assert.deepEqual(await mc.find(addr.db, `kv.${s}`), []);
            const [d] = await mc.find(addr.db, `kv.${other}`, { _id: 'k0' });
            assert.equal(d.v, 'keep');
        });
    });

    describe('mongodb: documents written by Nuxeo', { skip: rawSkip }, () => {
        let mc;

        before(async () => {
            mc = await MongoWire.connect(addr);
        });
        after(() => mc?.close());

        test('string, Int64 and binary values are read, listed, compared and counted', async () => {
            const s = uniqueStore('nuxeo');
            const coll = `kv.${s}`;
            const bin = Buffer.from([0xff, 0x00, 0xfe, 0x0a]);
            const later = new Date(Date.now() + TTL_N * 1000);
            await mc.command(addr.db, {
                insert: coll,
                documents: [
                    { _id: 'k', v: 'hello', ttl: later },
                    { _id: 'n', v: Long.fromNumber(41), ttl: later },
                    { _id: 'plain', v: 'kvbus' },
                    { _id: 'bin', v: new Binary(bin) },
                    { _id: 'five', v: Long.fromNumber(5) },
                    { _id: 'txt41', v: '41', ttl: later },
                    { _id: 'str5', v: '5' },
                    { _id: 'bin5', v: new Binary(Buffer.from('5')) },
                ],
            });
            const g = await get(s, 'k');
            assert.equal(g.status, 200);
            assert.equal(text(g), 'hello');
            assert.equal(g.headers.etag, `"${XXH3.hello}"`);
            assertTtlNear(ttlHeader(g), TTL_N, 'X-Kvbus-TTL');
            const p = await get(s, 'plain');
            assert.equal(p.headers.etag, `"${XXH3.kvbus}"`);
            assert.equal(ttlHeader(p), undefined);
            assert.deepEqual((await get(s, 'bin')).body, bin);

            // An Int64 reads as its decimal text and compares as those bytes.
            assert.equal(text(await get(s, 'five')), '5');
            const etag5 = (await get(s, 'five')).headers.etag;
            assert.equal((await put(s, 'five', '6', { headers: { 'if-match': etag5 } })).status, 204);
            const [d5] = await mc.find(addr.db, coll, { _id: 'five' });
            assert.equal(bsonType(d5.v), 'Long');
            assert.equal(d5.v.toString(), '6');

            // The same bytes stored as a string or as binary compare equal
            // too (SPEC 5: CAS compares bytes).
            assert.equal((await get(s, 'str5')).headers.etag, etag5);
            assert.equal((await put(s, 'str5', 'x', { headers: { 'if-match': etag5 } })).status, 204);
            assert.equal((await put(s, 'bin5', 'y', { headers: { 'if-match': etag5 } })).status, 204);
            assert.equal(text(await get(s, 'bin5')), 'y');
            assert.equal((await del(s, 'str5', { 'if-match': (await get(s, 'str5')).headers.etag })).status, 204);

            const n = await incr(s, 'n', 1);
            assert.equal(n.status, 200);
            assert.equal(text(n), '42');
            const [dn] = await mc.find(addr.db, coll, { _id: 'n' });
            assert.equal(dn.v.toString(), '42');
            assertDateIn(dn.ttl, TTL_N, 'TTL of the counter after incr');

            // Canonical decimal text stored as a string (Nuxeo's
            // put(key, "41")) counts too, and becomes an Int64.
            assert.equal(text(await incr(s, 'txt41', 1)), '42');
            const [dt] = await mc.find(addr.db, coll, { _id: 'txt41' });
            assert.equal(bsonType(dt.v), 'Long');
            assert.equal(dt.v.toString(), '42');
            assertDateIn(dt.ttl, TTL_N, 'TTL of the text counter after incr');

            const { keys } = await listAllKeys(s, { limit: 2 });
            assert.deepEqual(keys.sort(), ['bin', 'bin5', 'five', 'k', 'n', 'plain', 'txt41']);
        });

        test('an expired document is absent at once, everywhere', async () => {
            const s = uniqueStore('expired');
            const coll = `kv.${s}`;
            const past = new Date(Date.now() - 10000);
            await mc.command(addr.db, {
                insert: coll,
                documents: [
                    { _id: 'old', v: 'stale', ttl: past },
                    { _id: 'cnt', v: Long.fromNumber(100), ttl: past },
                    { _id: 'cas', v: 'stale', ttl: past },
                    { _id: 'live', v: 'fresh' },
                ],
            });
            assert.equal((await get(s, 'old')).status, 404);
            assert.equal((await del(s, 'old')).status, 404);
            assert.equal((await setTtl(s, 'old', 10)).status, 404);
            const { keys } = await listAllKeys(s);
            assert.deepEqual(keys, ['live']);
            const m = json(await request('POST', `/v1/kv/${s}?op=mget`, {
                body: JSON.stringify({ keys: ['old', 'live'] }),
                headers: { 'content-type': 'application/json' },
            }));
            assert.deepEqual(Object.keys(m.values), ['live']);
            // incr counts from 0 and the new key has no TTL.
            assert.equal(text(await incr(s, 'cnt', 1)), '1');
            const [dc] = await mc.find(addr.db, coll, { _id: 'cnt' });
            assert.equal(dc.v.toString(), '1');
            assert.equal(dc.ttl, undefined);
            // Create-if-absent succeeds over it; the ETag of its old value
            // does not match it.
            assert.equal((await put(s, 'ref', 'stale')).status, 204);
            const staleTag = (await get(s, 'ref')).headers.etag;
            assert.equal((await put(s, 'cas', 'new', { headers: { 'if-none-match': '*' } })).status, 204);
            assert.equal(text(await get(s, 'cas')), 'new');
            assert.equal((await put(s, 'old', 'x', { headers: { 'if-match': staleTag } })).status, 412);
        });
    });

    describe('mongodb: listing', () => {
        test('regex metacharacters in a prefix are taken literally', async () => {
            const s = uniqueStore('regex');
            const keys = ['a.b', 'a*b', 'a+b', 'a?b', 'a(b)', 'a[b]', 'a{1}',
                'a|b', 'a^b', 'a$b', 'a\\b', 'a/b', 'axb', '.x', '^a', 'a-b'];
            for (const k of keys) assert.equal((await put(s, k, k)).status, 204, `PUT ${k}`);
            for (const [prefix, want] of [
                ['a.', ['a.b']], ['a*', ['a*b']], ['a+', ['a+b']], ['a?', ['a?b']],
                ['a(', ['a(b)']], ['a[', ['a[b]']], ['a[b', ['a[b]']], ['a{', ['a{1}']],
                ['a|', ['a|b']], ['a^', ['a^b']], ['a$', ['a$b']], ['a\\', ['a\\b']],
                ['a/', ['a/b']], ['ax', ['axb']], ['.', ['.x']], ['^', ['^a']],
                ['a-', ['a-b']], ['a', keys.filter((k) => k.startsWith('a'))],
                ['*', []], ['[', []], ['\\', []], ['(', []], ['$', []], ['b', []],
            ]) {
                const { keys: got } = await listAllKeys(s, { prefix, limit: 3 });
                assert.deepEqual(got.sort(), [...want].sort(), `prefix ${JSON.stringify(prefix)}`);
            }
        });
    });

    describe('mongodb outage (private test double and kvbusd)', () => {
        let dbl = null;
        let srv = null;
        let ownDir = null;
        let stopped = false; // the double was sent SIGSTOP and not SIGCONT yet

        before(async () => {
            ownDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-e2e-mongo-outage.'));
            dbl = await startDouble({ dir: ownDir });
            srv = await startKvbusd(KVBUSD, [
                '--server.log_level=warn',
                '--store.m.backend=mongodb',
                `--store.m.url=${dbl.url}`,
                `--store.m.op_timeout_ms=${OP_TIMEOUT_MS}`,
            ]);
        });

        after(async () => {
            if (dbl) {
                if (stopped) signal(dbl.pid, 'SIGCONT');
                signal(dbl.pid, 'SIGKILL');
            }
            if (srv && srv.proc.exitCode === null && srv.proc.signalCode === null) {
                srv.proc.kill('SIGKILL');
                await srv.exited;
            }
            privateAgent.destroy();
            if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true });
        });

        test('a stopped server: 503 within about op_timeout_ms, then at once; back after SIGCONT', async (t) => {
            const base = srv.url;
            await waitFor(async () => (await readyz(base)).status === 200,
                { timeoutMs: RECOVERY_LIMIT_MS, what: 'store m healthy' });
            assert.equal((await call(base, 'PUT', '/v1/kv/m/slow', { body: 'v' })).status, 204);
            assert.equal(await storeMetric(base, 'kvbus_store_up'), 1);

            signal(dbl.pid, 'SIGSTOP');
            stopped = true;
            try {
                const g = await call(base, 'GET', '/v1/kv/m/slow');
                assertBackend503(g, 'GET from a stopped server');
                assert.ok(g.ms < ANSWER_LIMIT_MS, `answered in ${Math.round(g.ms)} ms`);
                t.diagnostic(`first call: ${json(g).error} after ${Math.round(g.ms)} ms`);

                // Down now: calls are refused without waiting for the server.
                const g2 = await call(base, 'GET', '/v1/kv/m/slow');
                assertBackend503(g2, 'second GET from a stopped server');
                assert.equal(json(g2).error, 'unavailable');
                assert.ok(g2.ms < FAST_LIMIT_MS, `refused in ${Math.round(g2.ms)} ms`);
                assert.match(json(g2).message, /store m/);
                assert.ok(json(g2).message.includes(`127.0.0.1:${dbl.port}`),
                    `message names the server: ${json(g2).message}`);

                const rz = await readyz(base);
                assert.equal(rz.status, 503);
                assert.equal(rz.body.ready, false);
                assert.deepEqual(rz.store, { name: 'm', backend: 'mongodb', healthy: false });
                assert.equal(await storeMetric(base, 'kvbus_store_up'), 0);
            } finally {
                signal(dbl.pid, 'SIGCONT');
                stopped = false;
            }

            const up = performance.now();
            await waitFor(async () => {
                const r = await call(base, 'GET', '/v1/kv/m/slow');
                return r.status === 200 && text(r) === 'v';
            }, { timeoutMs: RECOVERY_LIMIT_MS, intervalMs: 50, what: 'GET after SIGCONT' });
            t.diagnostic(`served again ${Math.round(performance.now() - up)} ms after SIGCONT`);
            assert.equal((await readyz(base)).status, 200);
            assert.equal(await storeMetric(base, 'kvbus_store_up'), 1);
        });

        test('killed and started again on the same port under load: back without a restart', async (t) => {
            const base = srv.url;
            await waitFor(async () => (await readyz(base)).status === 200,
                { timeoutMs: RECOVERY_LIMIT_MS, what: 'store m healthy' });
            const reconnects0 = await storeMetric(base, 'kvbus_store_reconnects_total');

            const load = startLoad(base);
            try {
                await sleep(LOAD_PHASE_MS);
                const before0 = load.calls.slice();
                assert.ok(before0.length > 0, 'load calls before the outage');
                for (const c of before0) assertServed(c, 'before the outage');

                signal(dbl.pid, 'SIGKILL');
                await waitFor(() => !alive(dbl.pid),
                    { timeoutMs: STOP_LIMIT_MS, what: `pid ${dbl.pid} to exit` });
                const down = performance.now();
                const first = await waitFor(async () => {
                    const r = await call(base, 'GET', '/v1/kv/m/probe');
                    return r.status === 503 ? r : null;
                }, { timeoutMs: ANSWER_LIMIT_MS, what: 'a 503 after the kill' });
                assertBackend503(first, 'GET while down');

                const rz = await readyz(base);
                assert.equal(rz.status, 503);
                assert.equal(rz.store.healthy, false);
                assert.equal(await storeMetric(base, 'kvbus_store_up'), 0);

                await sleep(LOAD_PHASE_MS);
                const during = load.calls.filter((c) => c.start >= down + OP_TIMEOUT_MS);
                assert.ok(during.length > 0, 'load calls during the outage');
                for (const c of during) assertBackend503(c, `${c.op} during the outage`);

                dbl = await startDouble({ dir: dbl.dir, port: dbl.port });
                const up = performance.now();
                await waitFor(async () => {
                    const p = await call(base, 'PUT', '/v1/kv/m/after', { body: 'ok' });
                    if (p.status !== 204) return false;
                    const g = await call(base, 'GET', '/v1/kv/m/after');
                    return g.status === 200 && text(g) === 'ok';
                }, { timeoutMs: RECOVERY_LIMIT_MS, intervalMs: 50, what: 'PUT/GET after the restart' });
                const back = performance.now();
                t.diagnostic(`served again ${Math.round(back - up)} ms after the double was up`);

                await sleep(LOAD_PHASE_MS);
                const tail = load.calls.filter((c) => c.start >= back);
                assert.ok(tail.length > 0, 'load calls after recovery');
                for (const c of tail) assertServed(c, 'after recovery');
            } finally {
                await load.stop();
            }
            for (const c of load.calls) {
                assert.ok(!c.error, `${c.op}: ${c.error}`);
                const ok = [200, 204, 503].includes(c.status) ||
                    (c.status === 404 && c.op === 'GET');
                assert.ok(ok, `${c.op}: ${c.status} ${c.body}`);
                assert.ok(c.ms < ANSWER_LIMIT_MS, `${c.op} answered in ${Math.round(c.ms)} ms`);
            }
            t.diagnostic(`load: ${summary(load.calls)}`);
            assert.equal((await readyz(base)).status, 200);
            assert.equal(await storeMetric(base, 'kvbus_store_up'), 1);
            assert.ok(await storeMetric(base, 'kvbus_store_reconnects_total') >= reconnects0 + 1,
                'kvbus_store_reconnects_total counts the reconnect');
            assert.equal(srv.proc.exitCode, null, 'kvbusd is still running');
        });

        test('kvbusd stayed up and exits 0 on SIGTERM', async () => {
            assert.equal(srv.proc.exitCode, null, 'kvbusd is still running');
            const { code, signal: sig } = await srv.stop(STOP_LIMIT_MS);
            assert.equal(sig, null, `kvbusd died of ${sig}: ${srv.stderr()}`);
            assert.equal(code, 0, `kvbusd exit status: ${srv.stderr()}`);
        });
    });
}
