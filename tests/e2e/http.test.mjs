// Protocol-level and bad-input cases for kvbusd's HTTP server (SPEC 6 and
// 9): unknown routes and methods, malformed requests on raw sockets,
// oversized headers, keep-alive and pipelining, chunked bodies, and the
// operational endpoints /healthz, /readyz and /metrics. Backend-neutral;
// every test uses stores of its own.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
    BACKEND, request, text, json, uniqueStore, kvPath, put, get,
    assertJsonError, rawExchange, rawRequest, parseResponses, connectRaw,
    RAW_READY, HOST, PORT,
} from './lib.mjs';

/* Sends raw bytes and returns the first parsed response (asserts one). */
async function rawFirst(data, opts = {}) {
    const { data: buf, closed } = await rawExchange(data, {
        timeoutMs: 3000,
        until: (b) => {
            try {
                return parseResponses(b).length > 0;
            } catch {
                return false;
            }
        },
        ...opts,
    });
    const [res] = parseResponses(buf);
    assert.ok(res, `no HTTP response to the raw request, got ${JSON.stringify(buf.toString('latin1').slice(0, 200))}`);
    return { res, closed };
}

async function assertStillServing() {
    const r = await request('GET', '/healthz');
    assert.equal(r.status, 200, 'server still serves /healthz');
}

describe('routing errors', () => {
    test('an unknown route is 404 with a JSON error', async () => {
        for (const path of ['/nope', '/v1/nope', '/v2/kv/default/k',
            '/v1/kvx/default/k', '/healthzz']) {
            assertJsonError(await request('GET', path), 404, `GET ${path}`);
        }
    });

    test('a wrong method on a known route is 405 with a JSON error',
        async () => {
            const s = uniqueStore('method');
            const cases = [
                ['PATCH', `/v1/kv/${s}/k`],
                ['PUT', '/v1/kv'],
                ['DELETE', '/v1/kv'],
                ['PUT', `/v1/kv/${s}`],
                ['POST', '/healthz'],
                ['DELETE', '/metrics'],
            ];
            for (const [method, path] of cases) {
                assertJsonError(await request(method, path, { body: 'x' }),
                    405, `${method} ${path}`);
            }
            assertJsonError(await get(s, 'k'), 404, 'PATCH stored a key');
            // RFC 9110 15.5.6: a 405 names the methods the route takes.
            const r = await request('PATCH', `/v1/kv/${s}/k`, { body: 'x' });
            assert.equal(r.headers.allow, 'GET, HEAD, PUT, POST, DELETE');
            const r2 = await request('POST', '/healthz');
            assert.equal(r2.headers.allow, 'GET, HEAD');
        });

    test('an unknown op on a key is 400 and changes nothing', async () => {
        const s = uniqueStore('badop');
        await put(s, 'k', 'v');
        assertJsonError(await request('POST', kvPath(s, 'k', 'op=bogus')),
            400, 'op=bogus');
        assert.equal(text(await get(s, 'k')), 'v');
    });
});

describe('malformed requests', () => {
    test('a garbage request line is 400 and the server keeps serving',
        async () => {
            const { res } = await rawFirst('GARBAGE\r\n\r\n');
            assert.equal(res.status, 400);
            await assertStillServing();
        });

    test('other malformed requests get 400, never a crash', async () => {
        const bad = [
            'GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nContent-Length: abc\r\n\r\n',
            'GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
            'PUT /v1/kv/default/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
            '\x00\x01\x02\x03\r\n\r\n',
            'GET /v1/kv/default/a b HTTP/1.1\r\n\r\n',
        ];
        for (const req of bad) {
            const { res } = await rawFirst(req);
            assert.equal(res.status, 400, `for ${JSON.stringify(req)}`);
        }
        await assertStillServing();
    });

    test('a connection closed mid-request does not hurt the server',
        async () => {
            await rawExchange('PUT /v1/kv/default/half HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc',
                { timeoutMs: 200 });
            await rawExchange('GET /heal', { timeoutMs: 200, endWrite: true });
            await assertStillServing();
        });

    test('headers too large are 431', async () => {
        const big = 'x'.repeat(64 * 1024);
        const { res } = await rawFirst(rawRequest('GET', '/healthz', {
            headers: { 'X-Big': big },
        }));
        assert.equal(res.status, 431);
        // Many small headers adding up count as well.
        const many = {};
        for (let i = 0; i < 2000; i++) many[`X-H${i}`] = 'y'.repeat(30);
        const r2 = await rawFirst(rawRequest('GET', '/healthz',
            { headers: many }));
        assert.equal(r2.res.status, 431);
        await assertStillServing();
    });
});

describe('connections', () => {
    test('keep-alive: several requests answered on one connection',
        async () => {
            const s = uniqueStore('keepalive');
            const reqs = [
                rawRequest('PUT', kvPath(s, 'k'), { body: 'one' }),
                rawRequest('GET', kvPath(s, 'k')),
                rawRequest('GET', '/healthz'),
            ];
            // One request at a time, waiting for each answer.
            const sock = connectRaw();
            await new Promise((r, j) => {
                sock.once(RAW_READY, r);
                sock.once('error', j);
            });
            let buf = Buffer.alloc(0);
            sock.on('data', (c) => { buf = Buffer.concat([buf, c]); });
            let closed = false;
            sock.on('close', () => { closed = true; });
            const statuses = [];
            for (const [i, r] of reqs.entries()) {
                sock.write(r);
                const deadline = Date.now() + 3000;
                while (parseResponses(buf).length < i + 1 &&
                    Date.now() < deadline && !closed) {
                    await new Promise((res) => setTimeout(res, 5));
                }
                const got = parseResponses(buf);
                assert.equal(got.length, i + 1,
                    `answer ${i + 1} on the same connection`);
                statuses.push(got[i].status);
            }
            const got = parseResponses(buf);
            sock.destroy();
            assert.deepEqual(statuses, [204, 200, 200]);
            assert.equal(got[1].body.toString(), 'one');
        });

    test('pipelined requests in one write are answered in order',
        async () => {
            const s = uniqueStore('pipeline');
            const reqs = [
                rawRequest('PUT', kvPath(s, 'k1'), { body: 'v1' }),
                rawRequest('PUT', kvPath(s, 'k2'), { body: 'value-2' }),
                rawRequest('GET', kvPath(s, 'k1')),
                rawRequest('GET', kvPath(s, 'k2')),
                rawRequest('GET', '/healthz'),
                rawRequest('POST', kvPath(s, 'n', 'op=incr&delta=3')),
                rawRequest('DELETE', kvPath(s, 'k1')),
                rawRequest('GET', kvPath(s, 'k1')),
                rawRequest('HEAD', kvPath(s, 'k2')),
                rawRequest('GET', kvPath(s, 'n')),
            ];
            const heads = reqs.map((_, i) => i === 8);
            const { data } = await rawExchange(Buffer.concat(reqs), {
                timeoutMs: 3000,
                until: (b) => parseResponses(b, heads).length >= reqs.length,
            });
            const got = parseResponses(data, heads);
            assert.deepEqual(got.map((r) => r.status),
                [204, 204, 200, 200, 200, 200, 204, 404, 200, 200]);
            assert.equal(got[2].body.toString(), 'v1');
            assert.equal(got[3].body.toString(), 'value-2');
            assert.equal(got[5].body.toString(), '3');
            assert.equal(got[9].body.toString(), '3');
        });

    test('Connection: close is honoured after the response', async () => {
        const { data, closed } = await rawExchange(
            rawRequest('GET', '/healthz', { headers: { Connection: 'close' } }),
            { timeoutMs: 3000 });
        const [res] = parseResponses(data);
        assert.equal(res.status, 200);
        assert.ok(closed, 'server closed the connection');
    });

    // RFC 9112 9.6: a server that answers "close" must not process the
    // requests that follow on the connection. Each case pipelines, in one
    // write, a last request, a PUT and a GET: exactly one answer comes
    // back, the server closes, and the PUT was never run.
    const lastRequests = [
        ['Connection: close',
            rawRequest('GET', '/healthz', { headers: { Connection: 'close' } })],
        ['HTTP/1.0 without keep-alive',
            Buffer.from(`GET /healthz HTTP/1.0\r\nHost: ${HOST}:${PORT}\r\n\r\n`,
                'latin1')],
    ];
    for (const [label, last] of lastRequests) {
        test(`requests pipelined after ${label} are not answered`,
            async () => {
                const s = uniqueStore('afterclose');
                const { data, closed } = await rawExchange(Buffer.concat([
                    last,
                    rawRequest('PUT', kvPath(s, 'after'), { body: 'no' }),
                    rawRequest('GET', '/healthz'),
                ]), { timeoutMs: 3000 });
                assert.ok(closed, `${label}: the server closed the connection`);
                const got = parseResponses(data);
                assert.equal(got.length, 1,
                    `${label}: answers ${JSON.stringify(got.map((r) => r.status))}`);
                assert.equal(got[0].status, 200, `${label}: the answer to /healthz`);
                assert.match(got[0].headers.connection ?? '', /^close$/i,
                    `${label}: the answer says Connection: close`);
                assert.equal((await get(s, 'after')).status, 404,
                    `${label}: the pipelined PUT was not run`);
            });
    }

    test('a chunked request body is stored whole', async () => {
        const s = uniqueStore('chunked');
        const head = rawRequest('PUT', kvPath(s, 'k'), {
            headers: { 'Transfer-Encoding': 'chunked' },
        });
        const body = '5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n';
        const { res } = await rawFirst([head, body]);
        assert.equal(res.status, 204);
        assert.equal(text(await get(s, 'k')), 'hello world');
    });

    test('Expect: 100-continue gets a 100 then the answer', async () => {
        const s = uniqueStore('expect');
        const head = rawRequest('PUT', kvPath(s, 'k'), {
            headers: { 'Content-Length': '5', Expect: '100-continue' },
        });
        const { data: first } = await rawExchange(head, {
            timeoutMs: 1500,
            until: (b) => b.includes('\r\n\r\n'),
        });
        assert.match(first.toString('latin1'), /^HTTP\/1\.1 100 /,
            'interim 100 Continue');
    });
});

describe('operational endpoints', () => {
    test('/healthz is 200', async () => {
        const r = await request('GET', '/healthz');
        assert.equal(r.status, 200);
    });

    test('/readyz is 200 JSON naming each store', async () => {
        const r = await request('GET', '/readyz');
        assert.equal(r.status, 200, text(r));
        assert.match(String(r.headers['content-type']), /^application\/json\b/);
        const body = json(r);
        const flat = JSON.stringify(body);
        for (const name of ['default', 'notified']) {
            assert.ok(flat.includes(`"${name}"`), `readyz names ${name}: ${flat}`);
        }
    });

    test('/metrics is Prometheus text with request counters and latency',
        async () => {
            const s = uniqueStore('metrics');
            await put(s, 'a', 'hello');
            await put(s, 'b', 'kvbus!');
            await put(s, 'c', 'x');
            await get(s, 'a');
            const r = await request('GET', '/metrics');
            assert.equal(r.status, 200);
            assert.match(String(r.headers['content-type']), /^text\/plain\b/);
            const lines = text(r).split('\n');
            const samples = (name) => lines.filter((l) =>
                l.startsWith(name + '{') || l.startsWith(name + ' '));
            const labelled = (l, labels) => Object.entries(labels).every(
                ([k, v]) => l.includes(`${k}="${v}"`));
            const value = (l) => Number(l.trim().split(/\s+/).pop());

            assert.ok(lines.some((l) => /^# TYPE kvbus_requests_total counter/.test(l)),
                'TYPE line for kvbus_requests_total');
            assert.ok(samples('kvbus_requests_total').length > 0,
                'kvbus_requests_total samples');
            assert.ok(lines.some((l) =>
                /^# TYPE kvbus_request_duration_seconds histogram/.test(l)),
            'TYPE line for the latency histogram');

            const putBuckets = samples('kvbus_request_duration_seconds_bucket')
                .filter((l) => labelled(l, { store: s, op: 'put' }));
            assert.ok(putBuckets.length >= 2, `put buckets for ${s}`);
            const inf = putBuckets.find((l) => l.includes('le="+Inf"'));
            assert.ok(inf, '+Inf bucket');
            assert.equal(value(inf), 3, 'three puts counted in +Inf');
            const getBuckets = samples('kvbus_request_duration_seconds_bucket')
                .filter((l) => labelled(l, { store: s, op: 'get' }));
            assert.ok(getBuckets.length >= 2, `get buckets for ${s}`);
            const count = samples('kvbus_request_duration_seconds_count')
                .find((l) => labelled(l, { store: s, op: 'put' }));
            assert.ok(count && value(count) === 3, 'histogram _count');
            assert.ok(samples('kvbus_request_duration_seconds_sum')
                .some((l) => labelled(l, { store: s, op: 'put' })),
            'histogram _sum');

            const keys = samples('kvbus_store_keys')
                .find((l) => labelled(l, { store: s }));
            const bytes = samples('kvbus_store_bytes')
                .find((l) => labelled(l, { store: s }));
            if (BACKEND === 'memory') {
                assert.ok(keys, `kvbus_store_keys for ${s}`);
                assert.equal(value(keys), 3);
                assert.ok(bytes, `kvbus_store_bytes for ${s}`);
                assert.ok(value(bytes) >= 'hellokvbus!x'.length,
                    `kvbus_store_bytes ${value(bytes)}`);
            }
            for (const l of lines) {
                if (l === '' || l.startsWith('#')) continue;
                assert.match(l,
                    /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfNa]+( \d+)?$/,
                    `Prometheus sample line: ${l}`);
            }
        });
});
