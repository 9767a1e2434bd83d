// The WebSocket feed and pub/sub over HTTP (SPEC 6 and 7): every client op
// and its reply, message frames, exact and prefix subscriptions, payload
// encodings, bad frames, KV change notifications, /v1/topics, the pub/sub
// metrics, and the slow-consumer policy (bounded queue, `dropped`, close
// 1008, bounded memory).
//
// Most tests run against the kvbusd of tests/e2e/run (KVBUS_URL, whose
// config has a store `notified` with notify = true and max_value_bytes =
// 65536). The slow-consumer tests start kvbusds of their own (KVBUSD) so
// that the queue size and stall deadline are known. Every test uses topics
// of its own, so tests are independent.
//
// "Nothing arrived" is asserted with a marker: a message published after
// the one that must not arrive, on a topic the client does hear. Messages
// from one node reach a subscriber in publish order, so once the marker is
// in, anything published before it would be too.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
    request, text, json, uniqueStore, kvPath, put, del, incr, setTtl,
    assertJsonError, rawExchange, rawRequest, parseResponses,
} from './lib.mjs';
import {
    WsClient, nextId, waitFor, withTimeout, encodeClientFrame,
    parseServerFrames, rawWsConnect, startKvbusd, httpRequest, rssBytes,
    metricValue, OP_TEXT, OP_CLOSE,
} from './wslib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KVBUSD = process.env.KVBUSD ??
    path.resolve(HERE, '../../build/kvbusd');
const ASAN = KVBUSD.includes('build-asan');

// The server's largest client frame is about max_value_bytes*4/3 + 4096
// (≈ 91 KB with the harness's 65536); this is well past it.
const OVERSIZE_FRAME_BYTES = 200 * 1024;

let topicCounter = 0;

/* A topic name no other test (or run) uses, safe in a URL path. */
function uniqueTopic(label = 't') {
    topicCounter += 1;
    const rnd = Math.random().toString(36).slice(2, 8);
    return `ws-${label}-${process.pid}-${topicCounter}-${rnd}`;
}

/* POST /v1/pub/{topic}; asserts 202 and returns {topic, node, seq}. */
async function httpPublish(topic, body) {
    const r = await request('POST', `/v1/pub/${encodeURIComponent(topic)}`,
        { body });
    assert.equal(r.status, 202, `publish on ${topic}: ${text(r)}`);
    assert.match(String(r.headers['content-type']), /^application\/json\b/);
    return json(r);
}

/* Clients of one describe block, all closed by its after() hook. */
function clientPool() {
    const open = [];
    return {
        async open() {
            const c = await WsClient.open();
            open.push(c);
            return c;
        },
        async closeAll() {
            await Promise.all(open.splice(0).map((c) => c.close().catch(() => {})));
        },
    };
}

/* Asserts f is a well-formed error frame. */
function assertErrorFrame(f, what) {
    assert.equal(f.type, 'error', `${what}: expected an error frame, got ${JSON.stringify(f)}`);
    assert.equal(typeof f.error, 'string', `${what}: error code`);
    assert.ok(f.error.length > 0, `${what}: empty error code`);
    assert.equal(typeof f.message, 'string', `${what}: error message`);
    assert.ok(f.message.length > 0, `${what}: empty error message`);
}

/* Asserts the connection still answers a ping with a pong. */
async function assertUsable(c, what) {
    const id = nextId('alive');
    c.send({ op: 'ping', id });
    const f = await c.take((x) => x.id === id, { what: `pong after ${what}` });
    assert.equal(f.type, 'pong', `${what}: ping after it got ${JSON.stringify(f)}`);
    assert.equal(c.closeInfo, null, `${what}: connection was closed`);
}

async function getMetrics() {
    const r = await request('GET', '/metrics');
    assert.equal(r.status, 200);
    return text(r);
}

async function getTopics() {
    const r = await request('GET', '/v1/topics');
    assert.equal(r.status, 200, text(r));
    assert.match(String(r.headers['content-type']), /^application\/json\b/);
    return json(r);
}

/* ------------------------------------------------------------------ */

describe('client ops and their replies', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    test('ping is answered with pong, echoing a string or number id',
        async () => {
            const c = await pool.open();
            const r = await c.call('ping');
            assert.equal(r.type, 'pong');
            c.send({ op: 'ping', id: 42 });
            const n = await c.take((f) => f.id === 42, { what: 'pong id 42' });
            assert.equal(n.type, 'pong');
            c.send({ op: 'ping' });
            const plain = await c.take((f) => f.type === 'pong', { what: 'pong without id' });
            assert.equal(plain.id, undefined, 'no id sent, none echoed');
        });

    test('subscribe and unsubscribe reply with their topics and the id',
        async () => {
            const c = await pool.open();
            const t = uniqueTopic('sub');
            const topics = [t, `${t}.*`];
            const s = await c.subscribe(topics);
            assert.equal(s.type, 'subscribed', JSON.stringify(s));
            assert.deepEqual(s.topics, topics);
            const u = await c.unsubscribe(topics);
            assert.equal(u.type, 'unsubscribed', JSON.stringify(u));
            assert.deepEqual(u.topics, topics);
        });

    test('publish replies published with the topic, a seq and the id',
        async () => {
            const c = await pool.open();
            const t = uniqueTopic('pub');
            const a = await c.call('publish', { topic: t, data: 'one' });
            assert.equal(a.type, 'published', JSON.stringify(a));
            assert.equal(a.topic, t);
            assert.ok(Number.isInteger(a.seq) && a.seq > 0, `seq ${a.seq}`);
            const b = await c.call('publish', { topic: t, data: 'two' });
            assert.equal(b.type, 'published');
            assert.ok(b.seq > a.seq, `seq increases: ${a.seq} then ${b.seq}`);
        });
});

describe('delivery', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    test('an HTTP publish reaches a subscriber with topic, node, seq and ts',
        async () => {
            const c = await pool.open();
            const t = uniqueTopic('http');
            assert.equal((await c.subscribe([t])).type, 'subscribed');
            const replies = [];
            const t0 = Date.now();
            for (const body of ['hello', 'world', 'again']) {
                const r = await httpPublish(t, body);
                assert.equal(r.topic, t);
                assert.equal(typeof r.node, 'string');
                assert.ok(r.node.length > 0);
                replies.push(r);
            }
            const t1 = Date.now();
            const got = [];
            for (let i = 0; i < replies.length; i++) got.push(await c.takeMessage(t));
            assert.deepEqual(got.map((m) => m.data), ['hello', 'world', 'again']);
            for (let i = 0; i < got.length; i++) {
                const m = got[i];
                assert.equal(m.topic, t);
                assert.equal(m.node, replies[i].node, 'node as in the 202');
                assert.equal(m.seq, replies[i].seq, 'seq as in the 202');
                assert.ok(Number.isInteger(m.ts), `ts is an integer: ${m.ts}`);
                assert.ok(m.ts >= t0 - 1000 && m.ts <= t1 + 1000,
                    `ts ${m.ts} is a wall-clock ms time near ${t0}..${t1}`);
                if (i > 0) assert.ok(m.seq > got[i - 1].seq, 'seq increases');
            }
            const { node } = await getTopics();
            assert.equal(got[0].node, node, 'node is this node\'s id');
        });

    test('a WebSocket publish reaches a second client; the publisher only once subscribed',
        async () => {
            const pub = await pool.open();
            const sub = await pool.open();
            const t = uniqueTopic('wspub');
            await sub.subscribe([t]);
            const p = await pub.call('publish', { topic: t, data: 'from ws' });
            assert.equal(p.type, 'published');
            const m = await sub.takeMessage(t);
            assert.equal(m.data, 'from ws');
            assert.equal(m.seq, p.seq, 'message seq = published seq');
            assert.equal(typeof m.node, 'string');

            // the publisher hears its own messages only when subscribed
            await pub.subscribe([t]);
            const p2 = await pub.call('publish', { topic: t, data: 'second' });
            const own = await pub.takeMessage(t);
            assert.equal(own.seq, p2.seq);
            assert.equal(own.data, 'second');
            assert.equal(pub.seen((f) => f.type === 'message' && f.seq === p.seq).length, 0,
                'the first publish reached its unsubscribed publisher');
            assert.equal((await sub.takeMessage(t)).seq, p2.seq);
        });

    test('exact topics and prefix patterns (x.*, *) match as specified',
        async () => {
            const exact = await pool.open();
            const prefix = await pool.open();
            const all = await pool.open();
            const b = uniqueTopic('pat');
            const end = `${b}.end`;
            await exact.subscribe([`${b}.a`, end]);
            await prefix.subscribe([`${b}.*`]);
            await all.subscribe(['*']);
            const published = [`${b}.a`, `${b}.ab`, `${b}.b.c`, `${b}x`, b];
            for (const t of published) await httpPublish(t, t);
            await httpPublish(end, 'end');
            for (const c of [exact, prefix, all]) await c.takeMessage(end);
            const topicsOf = (c) => c.seen((f) => f.type === 'message' &&
                f.topic.startsWith(b) && f.topic !== end).map((f) => f.topic);
            assert.deepEqual(topicsOf(exact), [`${b}.a`]);
            assert.deepEqual(topicsOf(prefix), [`${b}.a`, `${b}.ab`, `${b}.b.c`]);
            assert.deepEqual(topicsOf(all), published);
            for (const c of [exact, prefix, all]) {
                for (const f of c.seen((x) => x.type === 'message' &&
                    x.topic.startsWith(b) && x.topic !== end)) {
                    assert.equal(f.data, f.topic, 'payload of its own topic');
                }
            }
        });

    test('a message matching several patterns of one client arrives once',
        async () => {
            const c = await pool.open();
            const b = uniqueTopic('dup');
            const t = `${b}.x`;
            await c.subscribe([`${b}.*`, t, `${b}.x*`, `${b}*`]);
            const r = await httpPublish(t, 'once');
            await httpPublish(`${b}.end`, 'end');
            await c.takeMessage(`${b}.end`);
            const got = c.seen((f) => f.type === 'message' && f.topic === t);
            assert.equal(got.length, 1, `got ${got.length} copies`);
            assert.equal(got[0].seq, r.seq);
        });

    test('unsubscribe stops delivery, of a topic and of a pattern', async () => {
        const c = await pool.open();
        const b = uniqueTopic('unsub');
        const t = `${b}.t`;
        const marker = `marker-${b}`;
        await c.subscribe([t, `${b}.*`, marker]);
        const r1 = await httpPublish(t, '1');
        assert.equal((await c.takeMessage(t)).seq, r1.seq);

        // still heard through the pattern
        const u1 = await c.unsubscribe([t]);
        assert.equal(u1.type, 'unsubscribed');
        const r2 = await httpPublish(t, '2');
        assert.equal((await c.takeMessage(t)).seq, r2.seq);

        const u2 = await c.unsubscribe([`${b}.*`]);
        assert.equal(u2.type, 'unsubscribed');
        await httpPublish(t, '3');
        await c.call('publish', { topic: `${b}.other`, data: '4' });
        await httpPublish(marker, 'end');
        await c.takeMessage(marker);
        const late = c.seen((f) => f.type === 'message' && f.topic.startsWith(`${b}.`));
        assert.deepEqual(late.map((f) => f.data), ['1', '2'],
            'nothing after unsubscribing');
    });
});

describe('payload encodings', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    test('UTF-8 payloads arrive as data, other bytes as data_b64', async () => {
        const pub = await pool.open();
        const sub = await pool.open();
        const t = uniqueTopic('enc');
        await sub.subscribe([t]);

        const utf8 = 'héllo ✓ 😀 "quoted" \\ \n tab\t end';
        const bytes = Buffer.alloc(256);
        for (let i = 0; i < 256; i++) bytes[i] = i;
        const cases = [
            ['ws data (UTF-8)', { data: utf8 }, { data: utf8 }],
            ['ws data (empty)', { data: '' }, { data: '' }],
            ['ws data_b64 (all bytes)', { data_b64: bytes.toString('base64') },
                { data_b64: bytes }],
            ['ws data_b64 (invalid UTF-8)', { data_b64: Buffer.from([0xc3, 0x28, 0xff]).toString('base64') },
                { data_b64: Buffer.from([0xc3, 0x28, 0xff]) }],
            ['ws data_b64 of UTF-8 text', { data_b64: Buffer.from(utf8).toString('base64') },
                { data: utf8 }],
        ];
        for (const [what, fields, want] of cases) {
            const r = await pub.call('publish', { topic: t, ...fields });
            assert.equal(r.type, 'published', `${what}: ${JSON.stringify(r)}`);
            const m = await sub.takeMessage(t);
            assert.equal(m.seq, r.seq, what);
            if (want.data !== undefined) {
                assert.equal(m.data, want.data, `${what}: data`);
                assert.equal(m.data_b64, undefined, `${what}: no data_b64`);
            } else {
                assert.equal(m.data, undefined, `${what}: no data`);
                assert.equal(typeof m.data_b64, 'string', `${what}: data_b64`);
                assert.deepEqual(Buffer.from(m.data_b64, 'base64'), want.data_b64,
                    `${what}: same bytes`);
            }
        }

        // whitespace in data_b64 is not base64
        for (const b64 of [' YQ==', 'YQ== ', 'Y Q==', 'YQ\n==']) {
            const r = await pub.call('publish', { topic: t, data_b64: b64 });
            assertErrorFrame(r, `data_b64 ${JSON.stringify(b64)}`);
        }

        // the same over HTTP: the body is the payload
        await httpPublish(t, bytes);
        const hb = await sub.takeMessage(t);
        assert.equal(hb.data, undefined);
        assert.deepEqual(Buffer.from(hb.data_b64, 'base64'), bytes);
        await httpPublish(t, Buffer.from(utf8));
        assert.equal((await sub.takeMessage(t)).data, utf8);
    });

    test('a NUL character round-trips in data, both ways', async () => {
        const pub = await pool.open();
        const sub = await pool.open();
        const t = uniqueTopic('nul');
        await sub.subscribe([t]);
        // NUL is UTF-8 text: it arrives as data, escaped as \u0000
        await httpPublish(t, Buffer.from('a\u0000b'));
        const m = await sub.takeMessage(t);
        assert.equal(m.data, 'a\u0000b');
        // and what a client receives as data it can publish as data
        const id = nextId('nul');
        pub.send({ op: 'publish', topic: t, data: m.data, id });
        const r = await pub.take((f) => f.id === id || f.type === 'error',
            { what: 'the answer to a publish with NUL in data' });
        assert.equal(r.type, 'published', `publish data "a\\u0000b": ${JSON.stringify(r)}`);
        assert.equal((await sub.takeMessage(t)).data, 'a\u0000b');
    });
});

describe('bad frames', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    const long = 'x'.repeat(256);
    const max = 'y'.repeat(255);

    // [label, frame (object → JSON, string as is), echoes id]
    const cases = [
        ['bad JSON', '{"op":"ping",', false],
        ['empty text frame', '', false],
        ['JSON array', '[{"op":"ping"}]', false],
        ['JSON string', '"ping"', false],
        ['JSON number', '42', false],
        ['JSON null', 'null', false],
        ['unknown op', { op: 'dance' }, true],
        ['op not a string', { op: 7 }, true],
        ['no op', { topics: ['a'] }, true],
        ['subscribe "a b"', { op: 'subscribe', topics: ['a b'] }, true],
        ['subscribe "a*b"', { op: 'subscribe', topics: ['a*b'] }, true],
        ['subscribe "**"', { op: 'subscribe', topics: ['**'] }, true],
        ['subscribe 256 chars', { op: 'subscribe', topics: [long] }, true],
        ['subscribe empty topic', { op: 'subscribe', topics: [''] }, true],
        ['subscribe control char', { op: 'subscribe', topics: ['a\u0001b'] }, true],
        ['subscribe non-ASCII', { op: 'subscribe', topics: ['caf\u00e9'] }, true],
        ['subscribe a number', { op: 'subscribe', topics: [5] }, true],
        ['subscribe without topics', { op: 'subscribe' }, true],
        ['subscribe topics []', { op: 'subscribe', topics: [] }, true],
        ['subscribe topics a string', { op: 'subscribe', topics: 'a' }, true],
        ['unsubscribe without topics', { op: 'unsubscribe' }, true],
        ['unsubscribe "a b"', { op: 'unsubscribe', topics: ['a b'] }, true],
        ['publish without topic', { op: 'publish', data: 'x' }, true],
        ['publish "a b"', { op: 'publish', topic: 'a b', data: 'x' }, true],
        ['publish "a*b"', { op: 'publish', topic: 'a*b', data: 'x' }, true],
        ['publish a pattern', { op: 'publish', topic: 'a.*', data: 'x' }, true],
        ['publish 256 chars', { op: 'publish', topic: long, data: 'x' }, true],
        ['publish empty topic', { op: 'publish', topic: '', data: 'x' }, true],
        ['publish without data', { op: 'publish', topic: 'ok' }, true],
        ['publish data and data_b64',
            { op: 'publish', topic: 'ok', data: 'x', data_b64: 'eA==' }, true],
        ['publish data not a string', { op: 'publish', topic: 'ok', data: 5 }, true],
        ['publish bad base64 "!!!!"', { op: 'publish', topic: 'ok', data_b64: '!!!!' }, true],
        ['publish bad base64 "abc"', { op: 'publish', topic: 'ok', data_b64: 'abc' }, true],
    ];

    test('every bad frame gets an error frame and the connection stays',
        async () => {
            const c = await pool.open();
            for (const [what, frame, echoes] of cases) {
                let id;
                if (typeof frame === 'string') {
                    c.send(frame);
                } else {
                    id = nextId('bad');
                    c.send({ ...frame, id });
                }
                const f = await c.take((x) => x.type !== 'message',
                    { what: `the answer to ${what}` });
                assertErrorFrame(f, what);
                if (echoes) assert.equal(f.id, id, `${what}: id echoed`);
                await assertUsable(c, what);
            }
        });

    test('data_b64 with padding anywhere but at the end is refused',
        async () => {
            const c = await pool.open();
            const t = uniqueTopic('pad');
            for (const b64 of ['a=bc', 'YQ=a', '=YQ=', '====', 'a===', 'YQ==YQ==']) {
                const r = await c.call('publish', { topic: t, data_b64: b64 });
                assertErrorFrame(r, `data_b64 ${JSON.stringify(b64)}`);
            }
            await assertUsable(c, 'bad padding');
        });

    test('a bad subscribe applies none of its topics', async () => {
        const c = await pool.open();
        const t = uniqueTopic('partial');
        const marker = `${t}.end`;
        const e = await c.subscribe([t, 'a b']);
        assertErrorFrame(e, 'subscribe with one bad topic');
        await c.subscribe([marker]);
        await httpPublish(t, 'no');
        await httpPublish(marker, 'end');
        await c.takeMessage(marker);
        assert.equal(c.seen((f) => f.type === 'message' && f.topic === t).length, 0);
    });

    test('a 255-byte topic is accepted by subscribe and publish', async () => {
        const c = await pool.open();
        const t = (uniqueTopic('max') + max).slice(0, 255);
        assert.equal((await c.subscribe([t])).type, 'subscribed');
        const r = await c.call('publish', { topic: t, data: 'max' });
        assert.equal(r.type, 'published', JSON.stringify(r));
        assert.equal((await c.takeMessage(t)).data, 'max');
    });

    test('a binary frame gets an error frame and the connection stays',
        async () => {
            const c = await pool.open();
            c.send(Buffer.from('{"op":"ping"}'), { binary: true });
            const f = await c.take(() => true, { what: 'the answer to a binary frame' });
            assertErrorFrame(f, 'binary frame');
            await assertUsable(c, 'binary frame');
        });

    test('a frame past the frame limit gets a too_large error, the connection stays',
        async () => {
            const c = await pool.open();
            const t = uniqueTopic('big');
            const id = nextId('big');
            c.send({ op: 'publish', topic: t, data: 'z'.repeat(OVERSIZE_FRAME_BYTES), id });
            const f = await c.take(() => true, { what: 'the answer to a 200 KB frame' });
            assertErrorFrame(f, '200 KB frame');
            assert.equal(f.error, 'too_large', JSON.stringify(f));
            await assertUsable(c, '200 KB frame');
            const tp = await getTopics();
            assert.ok(!tp.topics.some((x) => x.name === t), 'nothing was published');
        });

    test('a frame far past the limit closes the connection with 1009, the server stays',
        async () => {
            const c = await pool.open();
            c.send({ op: 'publish', topic: 'huge', data: 'z'.repeat(1024 * 1024) });
            const { code } = await withTimeout(c.closed, 5000, 'close after a 1 MB frame');
            assert.equal(code, 1009, 'message too big');
            const d = await pool.open();
            await assertUsable(d, 'another client after the 1 MB frame');
        });
});

describe('the /v1/ws endpoint over plain HTTP', () => {
    test('a GET without an upgrade is 400 with a JSON error', async () => {
        assertJsonError(await request('GET', '/v1/ws'), 400, 'GET /v1/ws');
        assertJsonError(await request('GET', '/v1/ws', {
            headers: { connection: 'Upgrade', upgrade: 'h2c' },
        }), 400, 'GET /v1/ws with Upgrade: h2c');
    });

    test('an upgrade with a version other than 13 is refused with 426',
        async () => {
            const { data } = await rawExchange(rawRequest('GET', '/v1/ws', {
                headers: {
                    Connection: 'Upgrade', Upgrade: 'websocket',
                    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
                    'Sec-WebSocket-Version': '8',
                },
            }), { until: (b) => parseResponses(b).length > 0 });
            const [res] = parseResponses(data);
            assert.ok(res, 'an answer');
            assert.equal(res.status, 426);
            assert.equal(res.headers['sec-websocket-version'], '13',
                'RFC 6455 4.4: the versions the server speaks');
            assert.equal(JSON.parse(res.body.toString()).error,
                'upgrade_required');
        });
});

/* ------------------------------------------------------------------ */

describe('KV change notifications', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    /* The next notification on kv.notified, parsed. */
    async function nextChange(c) {
        const m = await c.takeMessage('kv.notified');
        assert.equal(typeof m.data, 'string', 'a JSON text payload');
        return JSON.parse(m.data);
    }

    test('each mutation of a notify store is published on kv.<store>',
        async () => {
            const c = await pool.open();
            await c.subscribe(['kv.notified']);
            const s = 'notified';
            const k = uniqueTopic('key');
            const k1 = `${k}/one`;
            const k2 = `${k}/two`;
            const k3 = `${k}/three`;
            const want = [];
            const step = async (what, res, status, change) => {
                assert.equal(res.status, status, `${what}: ${text(res)}`);
                if (change) want.push(change);
            };

            await step('put', await put(s, k1, 'v1'), 204,
                { store: s, op: 'put', key: k1 });
            await step('put with ttl', await put(s, k2, 'v', { ttl: 60 }), 204,
                { store: s, op: 'put', key: k2 });
            await step('incr', await incr(s, `${k}/n`, 5), 200,
                { store: s, op: 'incr', key: `${k}/n` });
            await step('ttl', await setTtl(s, k1, 100), 204,
                { store: s, op: 'ttl', key: k1 });
            const g = await request('GET', kvPath(s, k1));
            await step('cas put', await put(s, k1, 'v2',
                { headers: { 'if-match': g.headers.etag } }), 204,
            { store: s, op: 'put', key: k1 });
            await step('cas create', await put(s, k3, 'new',
                { headers: { 'if-none-match': '*' } }), 204,
            { store: s, op: 'put', key: k3 });
            const g3 = await request('GET', kvPath(s, k3));
            await step('cas delete', await del(s, k3, { 'if-match': g3.headers.etag }), 204,
                { store: s, op: 'delete', key: k3 });
            await step('delete', await del(s, k1), 204,
                { store: s, op: 'delete', key: k1 });

            // failures change nothing and say nothing
            await step('delete absent', await del(s, k1), 404);
            await step('ttl absent', await setTtl(s, k1, 5), 404);
            await step('cas put mismatch', await put(s, k2, 'x',
                { headers: { 'if-match': '"0000000000000000"' } }), 412);
            await step('cas create present', await put(s, k2, 'x',
                { headers: { 'if-none-match': '*' } }), 412);
            await step('put non-integer', await put(s, `${k}/text`, 'abc'), 204,
                { store: s, op: 'put', key: `${k}/text` });
            await step('incr non-integer', await incr(s, `${k}/text`, 1), 409);

            await step('clear', await request('DELETE', `/v1/kv/${s}`), 204,
                { store: s, op: 'clear', key: '' });

            const got = [];
            for (let i = 0; i < want.length; i++) got.push(await nextChange(c));
            assert.deepEqual(got, want);

            // and nothing more: the next change is a marker put
            const mk = `${k}/marker`;
            await step('marker', await put(s, mk, 'm'), 204);
            assert.deepEqual(await nextChange(c), { store: s, op: 'put', key: mk });
        });

    test('a store without notify publishes nothing', async () => {
        const c = await pool.open();
        await c.subscribe(['kv.*']);
        const other = uniqueStore('quiet');
        const k = uniqueTopic('quiet');
        for (const s of ['default', other]) {
            assert.equal((await put(s, k, '1')).status, 204);
            assert.equal((await incr(s, k, 1)).status, 200);
            assert.equal((await setTtl(s, k, 60)).status, 204);
            assert.equal((await del(s, k)).status, 204);
        }
        assert.equal((await request('DELETE', `/v1/kv/${other}`)).status, 204);
        const mk = `${k}/marker`;
        assert.equal((await put('notified', mk, 'm')).status, 204);
        const m = await c.takeMessage('kv.notified');
        assert.deepEqual(JSON.parse(m.data), { store: 'notified', op: 'put', key: mk });
        const noise = c.seen((f) => f.type === 'message' &&
            (f.topic === 'kv.default' || f.topic === `kv.${other}`));
        assert.deepEqual(noise, [], 'no notifications from stores without notify');
        assert.equal((await del('notified', mk)).status, 204);
    });
});

/* ------------------------------------------------------------------ */

describe('observability', () => {
    const pool = clientPool();
    after(() => pool.closeAll());

    test('/v1/topics counts subscribers and published messages', async () => {
        const a = await pool.open();
        const b = await pool.open();
        const t = uniqueTopic('topics');
        const p = `${t}.*`;
        await a.subscribe([t, p]);
        await b.subscribe([t]);
        const before = await getTopics();
        assert.equal(typeof before.node, 'string');
        assert.equal(typeof before.provider, 'string');
        assert.ok(before.provider.length > 0, 'provider named');
        assert.ok(Array.isArray(before.topics));
        const entry = (body, name) => body.topics.find((x) => x.name === name);
        assert.equal(entry(before, t)?.subscribers, 2, JSON.stringify(entry(before, t)));
        assert.equal(entry(before, p)?.subscribers, 1, JSON.stringify(entry(before, p)));
        assert.equal(entry(before, t).published, 0);

        await httpPublish(t, '1');
        await httpPublish(t, '2');
        await a.call('publish', { topic: t, data: '3' });
        await httpPublish(`${t}.sub`, '4');
        const mid = await getTopics();
        const e = entry(mid, t);
        assert.equal(e.published, 3, JSON.stringify(e));
        assert.equal(e.subscribers, 2);
        assert.equal(typeof e.rate, 'number');
        assert.ok(e.rate > 0, `rate ${e.rate}`);
        assert.equal(entry(mid, p).published, 1, 'the pattern counts its match');

        await b.close();
        await waitFor(async () => entry(await getTopics(), t)?.subscribers === 1,
            { what: `subscribers of ${t} back to 1` });
        await a.unsubscribe([t]);
        const last = entry(await getTopics(), t);
        assert.ok(last === undefined || last.subscribers === 0, JSON.stringify(last));
    });

    test('/metrics counts open connections and published messages', async () => {
        const m0 = await getMetrics();
        const open0 = metricValue(m0, 'kvbus_ws_connections_open');
        const pub0 = metricValue(m0, 'kvbus_pubsub_published_total');
        assert.equal(typeof open0, 'number', 'kvbus_ws_connections_open present');
        assert.equal(typeof pub0, 'number', 'kvbus_pubsub_published_total present');

        const a = await pool.open();
        const b = await pool.open();
        // earlier tests' connections may still be on their way out, so
        // the gauge is compared with what these two must account for
        const m1 = await getMetrics();
        const open1 = metricValue(m1, 'kvbus_ws_connections_open');
        assert.ok(open1 >= 2, `kvbus_ws_connections_open ${open1} with two open`);
        assert.ok(metricValue(m1, 'kvbus_ws_connections_total') >=
            metricValue(m0, 'kvbus_ws_connections_total') + 2,
        'kvbus_ws_connections_total counts both');

        const t = uniqueTopic('metrics');
        await httpPublish(t, '1');
        await a.call('publish', { topic: t, data: '2' });
        await b.call('publish', { topic: t, data: '3' });
        const m2 = await getMetrics();
        assert.ok(metricValue(m2, 'kvbus_pubsub_published_total') >= pub0 + 3,
            `published_total ${pub0} → ${metricValue(m2, 'kvbus_pubsub_published_total')}`);

        await a.close();
        await b.close();
        await waitFor(async () => metricValue(await getMetrics(),
            'kvbus_ws_connections_open') <= open1 - 2,
        { what: `kvbus_ws_connections_open down from ${open1} by 2` });
    });
});

/* ------------------------------------------------------------------ */
/* Slow consumers, on kvbusds of our own                               */

const QUEUE_BYTES = 262144;
const STALL_MS = 3000;
// The flood past a stalled client: 4000 x 32 KiB = 125 MiB, about twice
// the RSS bound, so a server that kept everything for the stalled client
// (or let its socket buffer grow) could not stay under it.
const FLOOD_MESSAGES = 4000;
const FLOOD_PAYLOAD_BYTES = 32 * 1024;
// The catch-up test needs drops, not volume: 3000 x 10 KiB.
const LAG_MESSAGES = 3000;
const LAG_PAYLOAD_BYTES = 10 * 1024;
const FLOOD_CONCURRENCY = 4;
// RSS may grow by this much over its value before the flood.
const RSS_BOUND_BYTES = 64 * 1024 * 1024;
// ASan's quarantine keeps freed memory for a while: cap it, so that RSS
// still says something about the server's own bookkeeping.
const ASAN_ENV = {
    ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=16']
        .filter(Boolean).join(':'),
};

/*
 * A stalled consumer: a raw socket, upgraded and subscribed to topic,
 * that reads nothing more until resume() (which it then does to the end).
 * Resolves with {sock, resume(), ended}: ended resolves with every byte
 * received after the handshake once the server closes.
 */
async function stalledConsumer(port, topic) {
    const { sock, rest } = await rawWsConnect({ host: '127.0.0.1', port });
    const chunks = [rest];
    let subscribed;
    const gotSubscribed = new Promise((r) => { subscribed = r; });
    const ended = new Promise((resolve) => {
        const done = () => resolve(Buffer.concat(chunks));
        sock.on('end', done);
        sock.on('close', done);
        sock.on('error', done);
    });
    sock.on('data', (c) => {
        chunks.push(c);
        if (subscribed && Buffer.concat(chunks).includes('"subscribed"')) {
            subscribed();
            subscribed = null;
            sock.pause(); // from here on, nothing is read
        }
    });
    sock.write(encodeClientFrame(OP_TEXT,
        JSON.stringify({ op: 'subscribe', topics: [topic], id: 'stalled' })));
    sock.resume();
    await withTimeout(gotSubscribed, 5000, 'the stalled client\'s subscribed reply');
    return {
        sock,
        ended,
        bytes: () => Buffer.concat(chunks),
        resume: () => sock.resume(),
    };
}

/*
 * Publishes count messages of payloadBytes on topic over keep-alive HTTP,
 * concurrency at a time. Payload i starts with "<i>:". Returns the seq of
 * every publish, in index order.
 */
async function flood(url, topic, count, payloadBytes, concurrency) {
    const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    const pad = 'p'.repeat(payloadBytes);
    const seqs = new Array(count);
    let next = 0;
    const worker = async () => {
        while (next < count) {
            const i = next++;
            const body = `${i}:${pad}`.slice(0, payloadBytes);
            const r = await httpRequest(url, 'POST', `/v1/pub/${topic}`, { body, agent });
            assert.equal(r.status, 202, `publish ${i}: ${r.body}`);
            seqs[i] = JSON.parse(r.body).seq;
        }
    };
    try {
        await Promise.all(Array.from({ length: concurrency }, worker));
    } finally {
        agent.destroy();
    }
    return seqs;
}

/* Samples the RSS of pid every intervalMs until stop(); keeps the max. */
function rssSampler(pid, intervalMs = 25) {
    let max = rssBytes(pid);
    const timer = setInterval(() => {
        try {
            max = Math.max(max, rssBytes(pid));
        } catch {
            // the process is gone; the test notices elsewhere
        }
    }, intervalMs);
    return {
        get max() { return max; },
        stop() { clearInterval(timer); max = Math.max(max, rssBytes(pid)); return max; },
    };
}

/*
 * Opens a healthy `ws` subscriber on topic at url; the caller awaits
 * waitCount(n) for n messages.
 */
async function healthyConsumer(url, topic) {
    const c = await WsClient.open(url.replace(/^http/, 'ws') + '/v1/ws');
    assert.equal((await c.subscribe([topic])).type, 'subscribed');
    return c;
}

function messagesOf(c, topic) {
    return c.log.filter((f) => f.type === 'message' && f.topic === topic);
}

const MB = (n) => `${(n / 1048576).toFixed(1)} MB`;

describe('closing', () => {
    test('a client close is answered with a close frame echoing the code',
        async () => {
            const c = await WsClient.open();
            c.ws.close(1000, 'bye');
            const { code } = await withTimeout(c.closed, 5000,
                'the server close reply');
            // ws reports 1006 when the server drops the socket without
            // answering the close frame.
            assert.equal(code, 1000);
        });

    test('a payload over max_value_bytes is refused, the connection stays',
        async () => {
            const c = await WsClient.open();
            const t = `big-payload-${process.pid}`;
            // 70000 bytes: inside the frame limit, past max_value_bytes.
            const f = await c.call('publish', { topic: t, data: 'p'.repeat(70000) });
            assertErrorFrame(f, 'a 70000-byte payload');
            assert.equal(f.error, 'too_large');
            await assertUsable(c, 'a 70000-byte payload');
            await c.close();
        });

    test('SIGTERM closes WebSocket clients with 1001 going away', async () => {
        const srv = await startKvbusd(KVBUSD, ['--server.log_level=warn']);
        const c = await WsClient.open(srv.url.replace(/^http/, 'ws') + '/v1/ws');
        await c.subscribe(['shutdown']);
        const exit = srv.stop();
        const { code } = await withTimeout(c.closed, 5000, 'close on SIGTERM');
        assert.equal(code, 1001);
        assert.deepEqual(await exit, { code: 0, signal: null });
    });
});

// Framing errors, each sent as raw bytes after the handshake. wslay finds
// some in the frame header (a control frame longer than 125 bytes or
// fragmented, a length not in its shortest form) and others once the
// header is read (reserved bits, a reserved opcode, an unmasked client
// frame); every one must be answered with a close frame carrying 1002.
// The kvbusd is a private plain one, since the raw client speaks plain TCP.
describe('protocol errors', () => {
    let srv;
    before(async () => {
        srv = await startKvbusd(KVBUSD, ['--server.log_level=error']);
    });
    after(() => srv?.stop());

    const MASK = [0x11, 0x22, 0x33, 0x44];
    // [label, bytes sent after the handshake]
    const cases = [
        ['bytes 0xff 0xff', [0xff, 0xff]],
        ['a ping with a 126 length', [0x89, 0x80 | 126, 0x00, 0x7e, ...MASK]],
        ['a close with a 127 length', [0x88, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0x80, ...MASK]],
        ['a fragmented ping (FIN clear)', [0x09, 0x80, ...MASK]],
        ['a 16-bit length under 126', [0x81, 0x80 | 126, 0x00, 0x05, ...MASK, 1, 2, 3, 4, 5]],
        ['a 64-bit length under 65536', [0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0x05, ...MASK, 1, 2, 3, 4, 5]],
        ['reserved bits set', [0xc1, 0x80, ...MASK]],
        ['a reserved data opcode', [0x83, 0x80, ...MASK]],
        ['an unmasked client frame', [0x81, 0x00]],
    ];

    for (const [label, bytes] of cases) {
        test(`${label} is answered with close 1002, then the socket closes`,
            async () => {
                const { sock, rest } = await rawWsConnect({ host: '127.0.0.1', port: srv.port });
                const chunks = [rest];
                const ended = new Promise((resolve) => {
                    sock.on('close', () => resolve(Buffer.concat(chunks)));
                });
                sock.on('data', (c) => chunks.push(c));
                sock.on('error', () => {}); // a reset still ends in 'close'
                sock.resume();
                sock.write(Buffer.from(bytes));
                const raw = await withTimeout(ended, 5000, `the close after ${label}`);
                const { frames, rest: tail } = parseServerFrames(raw);
                assert.equal(frames.length, 1, `${label}: frames ${JSON.stringify(frames)}`);
                assert.equal(tail.length, 0, `${label}: bytes after the frames`);
                const [f] = frames;
                assert.equal(f.opcode, OP_CLOSE, `${label}: not a close frame`);
                assert.equal(f.masked, false, `${label}: masked server frame`);
                assert.ok(f.payload.length >= 2,
                    `${label}: close frame without a status code`);
                assert.equal(f.payload.readUInt16BE(0), 1002, label);
            });
    }

    test('the server still serves WebSocket clients after them', async () => {
        const c = await WsClient.open(srv.url.replace(/^http/, 'ws') + '/v1/ws');
        await assertUsable(c, 'the protocol errors');
        await c.close();
    });
});

describe('slow consumers', { concurrency: false }, () => {
    test('a stalled client is closed with 1008; the others get everything; memory stays bounded',
        { timeout: 30000 }, async (t) => {
            const srv = await startKvbusd(KVBUSD, [
                `--server.ws_queue_bytes=${QUEUE_BYTES}`,
                `--server.ws_stall_ms=${STALL_MS}`,
                '--server.log_level=warn',
            ], { extraEnv: ASAN ? ASAN_ENV : {} });
            const clients = [];
            try {
                const topic = 'slow';
                const stalled = await stalledConsumer(srv.port, topic);
                const healthy = await healthyConsumer(srv.url, topic);
                clients.push(healthy);
                const rss0 = rssBytes(srv.pid);
                const sampler = rssSampler(srv.pid);

                // (c) the stalled client stays paused until the server
                // gives up on it, which may be while the flood still runs;
                // it resumes reading then, well within the second the
                // server allows its close frame to leave
                let closedAt = 0;
                const closeSeen = waitFor(async () => {
                    const r = await httpRequest(srv.url, 'GET', '/metrics');
                    return metricValue(r.body.toString(), 'kvbus_ws_slow_closed_total') >= 1;
                }, { timeoutMs: 25000, intervalMs: 20,
                    what: 'kvbus_ws_slow_closed_total to reach 1' })
                    .then(() => {
                        closedAt = Date.now();
                        stalled.resume();
                    });
                closeSeen.catch(() => {}); // awaited below

                const t0 = Date.now();
                const seqs = await flood(srv.url, topic, FLOOD_MESSAGES,
                    FLOOD_PAYLOAD_BYTES, FLOOD_CONCURRENCY);
                const floodMs = Date.now() - t0;

                // (a) the healthy client gets every message, in seq order
                await waitFor(() => messagesOf(healthy, topic).length >= FLOOD_MESSAGES,
                    { timeoutMs: 15000, intervalMs: 20,
                        what: () => `the healthy client to get ${FLOOD_MESSAGES} messages (has ${messagesOf(healthy, topic).length})` });
                const got = messagesOf(healthy, topic);
                assert.equal(healthy.seen((f) => f.type === 'dropped').length, 0,
                    'the healthy client was told of drops');
                assert.equal(got.length, FLOOD_MESSAGES);
                const sorted = [...seqs].sort((x, y) => x - y);
                assert.deepEqual(got.map((m) => m.seq), sorted,
                    'every message, in seq order');
                for (const m of got) {
                    assert.equal(m.data.length, FLOOD_PAYLOAD_BYTES);
                }

                await closeSeen;
                const raw = await withTimeout(stalled.ended, 5000,
                    'the server to close the stalled connection');
                const closeMs = Date.now() - closedAt;
                const rssDuring = sampler.stop();
                const rssAfter = rssBytes(srv.pid);

                const { frames, rest } = parseServerFrames(raw);
                assert.ok(frames.every((f) => !f.masked), 'server frames are not masked');
                const closes = frames.filter((f) => f.opcode === OP_CLOSE);
                assert.equal(closes.length, 1,
                    `one close frame (got ${closes.length}; ${frames.length} frames, ${rest.length} bytes left over)`);
                assert.equal(frames[frames.length - 1].opcode, OP_CLOSE,
                    'the close frame is the last');
                assert.ok(closes[0].payload.length >= 2, 'the close has a code');
                assert.equal(closes[0].payload.readUInt16BE(0), 1008, 'policy violation');
                assert.ok(closeMs < 3000,
                    `the socket went ${closeMs} ms after the close was counted`);
                const stalledMsgs = frames.filter((f) => f.opcode === 0x1)
                    .map((f) => JSON.parse(f.payload.toString()))
                    .filter((f) => f.type === 'message');
                assert.ok(stalledMsgs.length < FLOOD_MESSAGES,
                    'the stalled client did not get everything');

                // (b) memory stays bounded
                t.diagnostic(`flood: ${FLOOD_MESSAGES} x ${FLOOD_PAYLOAD_BYTES} B in ${floodMs} ms; ` +
                    `1008 seen ${closedAt - t0} ms after the flood began, socket gone ${closeMs} ms later; ` +
                    `RSS start ${MB(rss0)}, max ${MB(rssDuring)}, after ${MB(rssAfter)}; ` +
                    `stalled client got ${stalledMsgs.length} messages before close`);
                assert.ok(rssDuring - rss0 < RSS_BOUND_BYTES,
                    `RSS grew by ${MB(rssDuring - rss0)} during the flood`);
                assert.ok(rssAfter - rss0 < RSS_BOUND_BYTES,
                    `RSS grew by ${MB(rssAfter - rss0)} after the flood`);

                const m = (await httpRequest(srv.url, 'GET', '/metrics')).body.toString();
                assert.equal(metricValue(m, 'kvbus_ws_slow_closed_total'), 1);
                assert.ok(metricValue(m, 'kvbus_pubsub_dropped_total') > 0, 'drops counted');
                await waitFor(async () => metricValue(
                    (await httpRequest(srv.url, 'GET', '/metrics')).body.toString(),
                    'kvbus_ws_connections_open') === 1,
                { what: 'the healthy client alone open' });
                await assertUsable(healthy, 'the flood');
            } finally {
                await Promise.all(clients.map((c) => c.close().catch(() => {})));
                const exit = await srv.stop();
                assert.deepEqual(exit, { code: 0, signal: null },
                    `kvbusd exit after SIGTERM; stderr: ${srv.stderr().slice(-2000)}`);
            }
        });

    test('a slow client that catches up is told how many messages it missed',
        { timeout: 30000 }, async (t) => {
            // a deadline it never reaches, so it is only ever dropped from
            const srv = await startKvbusd(KVBUSD, [
                `--server.ws_queue_bytes=${QUEUE_BYTES}`,
                '--server.ws_stall_ms=600000',
                '--server.log_level=warn',
            ], { extraEnv: ASAN ? ASAN_ENV : {} });
            const clients = [];
            try {
                const topic = 'lagging';
                const slow = await stalledConsumer(srv.port, topic);
                const healthy = await healthyConsumer(srv.url, topic);
                clients.push(healthy);
                const rss0 = rssBytes(srv.pid);
                const sampler = rssSampler(srv.pid);
                const seqs = await flood(srv.url, topic, LAG_MESSAGES,
                    LAG_PAYLOAD_BYTES, FLOOD_CONCURRENCY);
                await waitFor(() => messagesOf(healthy, topic).length >= LAG_MESSAGES,
                    { timeoutMs: 15000,
                        what: () => `the healthy client to get ${LAG_MESSAGES} messages (has ${messagesOf(healthy, topic).length})` });
                const rssDuring = sampler.stop();

                // the slow one catches up; a last message marks the end
                const endPayload = 'the end';
                const first = parseServerFrames(slow.bytes());
                const buf = first.frames;
                let pending = first.rest;
                let sawEnd;
                const endSeen = new Promise((r) => { sawEnd = r; });
                slow.sock.on('data', (c) => {
                    const { frames, rest } = parseServerFrames(Buffer.concat([pending, c]));
                    pending = rest;
                    for (const f of frames) {
                        buf.push(f);
                        if (f.opcode === OP_TEXT && f.payload.includes(endPayload)) sawEnd();
                    }
                });
                slow.resume();
                const last = await httpRequest(srv.url, 'POST', `/v1/pub/${topic}`,
                    { body: endPayload });
                assert.equal(last.status, 202);
                await withTimeout(endSeen, 10000, 'the slow client to catch up');

                const parsed = buf.filter((f) => f.opcode === OP_TEXT)
                    .map((f) => JSON.parse(f.payload.toString()));
                assert.equal(buf.filter((f) => f.opcode === OP_CLOSE).length, 0, 'not closed');
                const msgs = parsed.filter((f) => f.type === 'message' && f.topic === topic);
                const dropped = parsed.filter((f) => f.type === 'dropped');
                assert.ok(dropped.length > 0, 'a dropped frame');
                for (const d of dropped) {
                    assert.ok(Number.isInteger(d.count) && d.count > 0, JSON.stringify(d));
                }
                const missed = dropped.reduce((n, d) => n + d.count, 0);
                const floodMsgs = msgs.slice(0, -1);
                assert.equal(msgs[msgs.length - 1].data, endPayload);
                assert.equal(floodMsgs.length + missed, LAG_MESSAGES,
                    `received ${floodMsgs.length} + dropped ${missed} = every message`);
                for (let i = 1; i < msgs.length; i++) {
                    assert.ok(msgs[i].seq > msgs[i - 1].seq, 'what arrives is in order');
                }
                const all = new Set(seqs);
                assert.ok(floodMsgs.every((m) => all.has(m.seq)));
                t.diagnostic(`slow client: ${floodMsgs.length} received, ${missed} dropped ` +
                    `in ${dropped.length} dropped frame(s); RSS start ${MB(rss0)}, max ${MB(rssDuring)}`);
                assert.ok(rssDuring - rss0 < RSS_BOUND_BYTES,
                    `RSS grew by ${MB(rssDuring - rss0)}`);
                slow.sock.destroy();
            } finally {
                await Promise.all(clients.map((c) => c.close().catch(() => {})));
                const exit = await srv.stop();
                assert.deepEqual(exit, { code: 0, signal: null },
                    `kvbusd exit after SIGTERM; stderr: ${srv.stderr().slice(-2000)}`);
            }
        });
});
