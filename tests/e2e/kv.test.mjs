// Conformance cases for the Key/Value API (SPEC sections 5 and 6): values
// and ETags, TTL, compare-and-set, counters, delete, mget, key listing,
// clearing, store routing and isolation, key/store name encoding and the
// value size limit. The same file runs against every backend; tests/e2e/run
// points KVBUS_URL at a kvbusd whose stores use KVBUS_TEST_BACKEND.
// Every test uses stores of its own, so tests are independent.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
    BACKEND, MAX_VALUE_BYTES, MAX_KEY_BYTES, XXH3,
    request, text, json, uniqueStore, kvPath,
    put, get, del, incr, setTtl, mget, keysPage, listAllKeys,
    assertJsonError, assertEtagShape, sleep,
    rawExchange, rawRequest, parseResponses,
} from './lib.mjs';

const etagOf = (hex) => `"${hex}"`;

// TTL of 2 s, read after this many ms: the key must be gone by then.
const EXPIRY_WAIT_MS = 2300;

function ttlHeader(res) {
    const v = res.headers['x-kvbus-ttl'];
    return v === undefined ? undefined : Number(v);
}

describe('values and ETags', () => {
    test('put then get, head and delete round-trip a value', async () => {
        const s = uniqueStore('roundtrip');
        const p = await put(s, 'k', 'hello');
        assert.equal(p.status, 204);
        assert.equal(p.body.length, 0);
        assert.equal(p.headers.etag, etagOf(XXH3.hello));

        const g = await get(s, 'k');
        assert.equal(g.status, 200);
        assert.equal(text(g), 'hello');
        assert.equal(g.headers.etag, etagOf(XXH3.hello));
        assert.equal(g.headers['x-kvbus-ttl'], undefined);

        const h = await request('HEAD', kvPath(s, 'k'));
        assert.equal(h.status, 200);
        assert.equal(h.body.length, 0);
        assert.equal(h.headers.etag, etagOf(XXH3.hello));

        const d = await del(s, 'k');
        assert.equal(d.status, 204);
        assertJsonError(await get(s, 'k'), 404, 'get after delete');
        const h2 = await request('HEAD', kvPath(s, 'k'));
        assert.equal(h2.status, 404);
        assert.equal(h2.body.length, 0);
    });

    test('binary values with NUL and non-UTF-8 bytes round-trip exactly',
        async () => {
            const s = uniqueStore('binary');
            const all = Buffer.alloc(256);
            for (let i = 0; i < 256; i++) all[i] = i;
            const p = await put(s, 'all', all);
            assert.equal(p.status, 204);
            assert.equal(p.headers.etag, etagOf(XXH3.all256));
            const g = await get(s, 'all');
            assert.equal(g.status, 200);
            assert.deepEqual(g.body, all);
            assert.equal(g.headers.etag, etagOf(XXH3.all256));

            const nul = Buffer.from([0]);
            assert.equal((await put(s, 'nul', nul)).status, 204);
            const gn = await get(s, 'nul');
            assert.deepEqual(gn.body, nul);
            assert.equal(gn.headers.etag, etagOf(XXH3.nul));

            const bad = Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0x00, 0x80]);
            assert.equal((await put(s, 'bad-utf8', bad)).status, 204);
            assert.deepEqual((await get(s, 'bad-utf8')).body, bad);
        });

    test('an empty value is allowed and has the XXH3 of ""', async () => {
        const s = uniqueStore('empty');
        const p = await put(s, 'e', '');
        assert.equal(p.status, 204);
        assert.equal(p.headers.etag, etagOf(XXH3.empty));
        const g = await get(s, 'e');
        assert.equal(g.status, 200);
        assert.equal(g.body.length, 0);
        assert.equal(g.headers.etag, etagOf(XXH3.empty));
    });

    test('ETag is the quoted XXH3-64 of the value bytes alone', async () => {
        const s1 = uniqueStore('etag1');
        const s2 = uniqueStore('etag2');
        const a = await put(s1, 'x', 'kvbus');
        assert.equal(a.headers.etag, etagOf(XXH3.kvbus));
        // Same bytes under another key and store: same ETag.
        const b = await put(s2, 'other', 'kvbus');
        assert.equal(b.headers.etag, a.headers.etag);
        // Different bytes: a different, well-formed ETag.
        const c = await put(s2, 'y', 'kvbus!');
        assertEtagShape(c.headers.etag);
        assert.notEqual(c.headers.etag, a.headers.etag);
        assert.equal((await get(s2, 'y')).headers.etag, c.headers.etag);
        // A random binary value: shape only, stable across reads.
        const r = Buffer.from(Array.from({ length: 100 }, (_, i) => i * 7));
        const pr = await put(s1, 'r', r);
        assertEtagShape(pr.headers.etag);
        assert.equal((await get(s1, 'r')).headers.etag, pr.headers.etag);
    });

    test('put replaces the value and its ETag', async () => {
        const s = uniqueStore('replace');
        await put(s, 'k', 'hello');
        const p = await put(s, 'k', 'kvbus');
        assert.equal(p.status, 204);
        const g = await get(s, 'k');
        assert.equal(text(g), 'kvbus');
        assert.equal(g.headers.etag, etagOf(XXH3.kvbus));
    });

    test('get of an absent key is 404 with a JSON error', async () => {
        const s = uniqueStore('absent');
        assertJsonError(await get(s, 'nope'), 404);
    });
});

describe('TTL (sleeping cases run concurrently)', { concurrency: true },
    () => {
        test('put with ttl=2 shows X-Kvbus-TTL 1..2 and expires on read',
            async () => {
                const s = uniqueStore('ttl-expire');
                const p = await put(s, 'k', 'v', { ttl: 2 });
                assert.equal(p.status, 204);
                const g = await get(s, 'k');
                assert.equal(g.status, 200);
                const t = ttlHeader(g);
                assert.ok(t >= 1 && t <= 2, `X-Kvbus-TTL ${t}`);
                const h = await request('HEAD', kvPath(s, 'k'));
                assert.ok(ttlHeader(h) >= 1 && ttlHeader(h) <= 2);
                await sleep(EXPIRY_WAIT_MS);
                assertJsonError(await get(s, 'k'), 404, 'expired key');
                const { keys } = await listAllKeys(s);
                assert.deepEqual(keys, [], 'expired key is not listed');
                const m = await mget(s, { keys: ['k'] });
                assert.deepEqual(json(m), { values: {} });
            });

        test('POST op=ttl gives an existing key an expiry that takes effect',
            async () => {
                const s = uniqueStore('ttl-set-expire');
                await put(s, 'k', 'v');
                const r = await setTtl(s, 'k', 2);
                assert.equal(r.status, 204);
                const t = ttlHeader(await get(s, 'k'));
                assert.ok(t >= 1 && t <= 2, `X-Kvbus-TTL ${t}`);
                await sleep(EXPIRY_WAIT_MS);
                assertJsonError(await get(s, 'k'), 404, 'expired key');
                assertJsonError(await setTtl(s, 'k', 5), 404,
                    'op=ttl on expired key');
            });

        test('put without ttl removes an earlier TTL', async () => {
            const s = uniqueStore('ttl-clear-put');
            await put(s, 'k', 'v1', { ttl: 100 });
            assert.ok(ttlHeader(await get(s, 'k')) > 0);
            assert.equal((await put(s, 'k', 'v2')).status, 204);
            const g = await get(s, 'k');
            assert.equal(text(g), 'v2');
            assert.equal(g.headers['x-kvbus-ttl'], undefined);
        });

        test('put with ttl=0 stores without expiry', async () => {
            const s = uniqueStore('ttl-zero-put');
            await put(s, 'k', 'v1', { ttl: 100 });
            assert.equal((await put(s, 'k', 'v2', { ttl: 0 })).status, 204);
            assert.equal((await get(s, 'k')).headers['x-kvbus-ttl'],
                undefined);
        });

        test('POST op=ttl is 204 on a present key and 404 on an absent one',
            async () => {
                const s = uniqueStore('ttl-op');
                await put(s, 'k', 'v');
                assert.equal((await setTtl(s, 'k', 50)).status, 204);
                const t = ttlHeader(await get(s, 'k'));
                assert.ok(t >= 49 && t <= 50, `X-Kvbus-TTL ${t}`);
                assertJsonError(await setTtl(s, 'absent', 50), 404);
                assertJsonError(await get(s, 'absent'), 404,
                    'op=ttl does not create the key');
            });

        test('POST op=ttl with ttl=0 removes the expiry', async () => {
            const s = uniqueStore('ttl-op-zero');
            await put(s, 'k', 'v', { ttl: 100 });
            assert.equal((await setTtl(s, 'k', 0)).status, 204);
            const g = await get(s, 'k');
            assert.equal(g.status, 200);
            assert.equal(g.headers['x-kvbus-ttl'], undefined);
            // Also 204 on a key that had no expiry (SPEC 5.4).
            await put(s, 'plain', 'v');
            assert.equal((await setTtl(s, 'plain', 0)).status, 204);
        });

        test('a bad ttl is 400 and stores nothing', async () => {
            const s = uniqueStore('ttl-bad');
            await put(s, 'k', 'old');
            const bad = ['-1', 'abc', '1.5', '', '99999999999999999999',
                '9223372036854775808', '0x10'];
            for (const t of bad) {
                assertJsonError(
                    await request('PUT', kvPath(s, 'new', `ttl=${t}`),
                        { body: 'v' }), 400, `PUT ttl=${t}`);
                assertJsonError(
                    await request('PUT', kvPath(s, 'k', `ttl=${t}`),
                        { body: 'v' }), 400, `PUT ttl=${t} on present key`);
                assertJsonError(await setTtl(s, 'k', t), 400,
                    `op=ttl ttl=${t}`);
            }
            assertJsonError(await get(s, 'new'), 404, 'bad ttl stored');
            const g = await get(s, 'k');
            assert.equal(text(g), 'old');
            assert.equal(g.headers['x-kvbus-ttl'], undefined);
        });
    });

describe('compare-and-set', () => {
    test('PUT If-None-Match: * creates when absent, 412 when present',
        async () => {
            const s = uniqueStore('cas-create');
            const h = { 'if-none-match': '*' };
            const a = await put(s, 'k', 'first', { headers: h });
            assert.equal(a.status, 204);
            assertEtagShape(a.headers.etag);
            assert.equal((await get(s, 'k')).headers.etag, a.headers.etag);
            assertJsonError(await put(s, 'k', 'second', { headers: h }), 412);
            assert.equal(text(await get(s, 'k')), 'first');
        });

    test('PUT If-Match replaces on a matching ETag, 412 otherwise',
        async () => {
            const s = uniqueStore('cas-match');
            await put(s, 'k', 'hello');
            const ok = await put(s, 'k', 'kvbus',
                { headers: { 'if-match': etagOf(XXH3.hello) } });
            assert.equal(ok.status, 204);
            assert.equal(ok.headers.etag, etagOf(XXH3.kvbus));
            assert.equal(text(await get(s, 'k')), 'kvbus');

            // The old ETag no longer matches.
            assertJsonError(await put(s, 'k', 'third',
                { headers: { 'if-match': etagOf(XXH3.hello) } }), 412,
            'stale ETag');
            assert.equal(text(await get(s, 'k')), 'kvbus');
        });

    test('PUT If-Match on an absent key is 412 and creates nothing',
        async () => {
            const s = uniqueStore('cas-absent');
            assertJsonError(await put(s, 'k', 'v',
                { headers: { 'if-match': etagOf(XXH3.empty) } }), 412);
            assertJsonError(await get(s, 'k'), 404, 'key was created');
        });

    test('DELETE If-Match deletes only on a matching ETag', async () => {
        const s = uniqueStore('cas-delete');
        await put(s, 'k', 'hello');
        assertJsonError(
            await del(s, 'k', { 'if-match': etagOf(XXH3.kvbus) }), 412);
        assert.equal(text(await get(s, 'k')), 'hello');
        const d = await del(s, 'k', { 'if-match': etagOf(XXH3.hello) });
        assert.equal(d.status, 204);
        assertJsonError(await get(s, 'k'), 404, 'after conditional delete');
        assertJsonError(
            await del(s, 'k', { 'if-match': etagOf(XXH3.hello) }), 412,
            'conditional delete of an absent key');
    });

    test('a CAS put sets the TTL in the same step', async () => {
        const s = uniqueStore('cas-ttl');
        const a = await put(s, 'k', 'hello',
            { ttl: 60, headers: { 'if-none-match': '*' } });
        assert.equal(a.status, 204);
        let t = ttlHeader(await get(s, 'k'));
        assert.ok(t >= 59 && t <= 60, `X-Kvbus-TTL after create ${t}`);

        const b = await put(s, 'k', 'kvbus',
            { ttl: 120, headers: { 'if-match': etagOf(XXH3.hello) } });
        assert.equal(b.status, 204);
        t = ttlHeader(await get(s, 'k'));
        assert.ok(t >= 119 && t <= 120, `X-Kvbus-TTL after replace ${t}`);

        // A CAS put without ttl leaves the key without expiry.
        const c = await put(s, 'k', 'hello',
            { headers: { 'if-match': etagOf(XXH3.kvbus) } });
        assert.equal(c.status, 204);
        assert.equal((await get(s, 'k')).headers['x-kvbus-ttl'], undefined);

        // A failed CAS changes neither the value nor the TTL.
        await put(s, 'k2', 'v', { ttl: 100 });
        assertJsonError(await put(s, 'k2', 'w',
            { ttl: 5, headers: { 'if-none-match': '*' } }), 412);
        t = ttlHeader(await get(s, 'k2'));
        assert.ok(t >= 99, `TTL changed by a failed CAS: ${t}`);
    });
});

describe('counters', () => {
    test('incr on a missing key counts from 0; GET returns decimal text',
        async () => {
            const s = uniqueStore('incr');
            const a = await incr(s, 'n', 5);
            assert.equal(a.status, 200);
            assert.equal(text(a), '5');
            const b = await incr(s, 'n', 574);
            assert.equal(b.status, 200);
            assert.equal(text(b), '579');
            const g = await get(s, 'n');
            assert.equal(text(g), '579');
            assert.equal(g.headers.etag, etagOf(XXH3.n579));
        });

    test('incr accepts a negative delta and goes below zero', async () => {
        const s = uniqueStore('incr-neg');
        await put(s, 'n', '10');
        assert.equal(text(await incr(s, 'n', -15)), '-5');
        assert.equal(text(await get(s, 'n')), '-5');
        assert.equal(text(await incr(s, 'n', 0)), '-5');
        assert.equal(text(await incr(s, 'fresh', -3)), '-3');
    });

    test('incr on a non-integer value is 409 and leaves it unchanged',
        async () => {
            const s = uniqueStore('incr-notint');
            const values = ['abc', '1.5', '1e3', '', '0x1',
                Buffer.from([0x31, 0x00])];
            for (const [i, v] of values.entries()) {
                const k = `k${i}`;
                await put(s, k, v);
                assertJsonError(await incr(s, k, 1), 409, `value ${v}`);
                assert.deepEqual((await get(s, k)).body, Buffer.from(v));
            }
        });

    test('incr on non-canonical integer text is 409', async () => {
        const s = uniqueStore('incr-canon');
        const values = ['01', '-0', ' 1', '1 ', '+1', '00', '-01',
            '9223372036854775808', '-9223372036854775809',
            '000000000000000000001'];
        for (const [i, v] of values.entries()) {
            const k = `k${i}`;
            await put(s, k, v);
            assertJsonError(await incr(s, k, 1), 409, `value ${JSON.stringify(v)}`);
            assert.equal(text(await get(s, k)), v);
        }
    });

    test('incr overflow past INT64_MAX or below INT64_MIN is 409, unchanged',
        async () => {
            const s = uniqueStore('incr-overflow');
            const max = '9223372036854775807';
            const min = '-9223372036854775808';
            await put(s, 'hi', max);
            assertJsonError(await incr(s, 'hi', 1), 409, 'max + 1');
            assert.equal(text(await get(s, 'hi')), max);
            await put(s, 'lo', min);
            assertJsonError(await incr(s, 'lo', -1), 409, 'min - 1');
            assert.equal(text(await get(s, 'lo')), min);
            await put(s, 'one', '1');
            assertJsonError(await incr(s, 'one', max), 409, '1 + max');
            assert.equal(text(await get(s, 'one')), '1');
            // The extremes themselves are fine.
            assert.equal(text(await incr(s, 'lo', 0)), min);
            assert.equal(text(await incr(s, 'hi', -1)),
                '9223372036854775806');
            assert.equal(text(await incr(s, 'fresh', min)), min);
        });

    test('incr with a bad delta is 400 and changes nothing', async () => {
        const s = uniqueStore('incr-baddelta');
        await put(s, 'n', '7');
        const bad = ['abc', '1.5', '', '99999999999999999999',
            '9223372036854775808', '0x10', '1e3'];
        for (const d of bad) {
            assertJsonError(await incr(s, 'n', d), 400, `delta=${d}`);
        }
        assert.equal(text(await get(s, 'n')), '7');
        assertJsonError(await incr(s, 'absent', 'abc'), 400);
        assertJsonError(await get(s, 'absent'), 404, 'bad incr created key');
    });

    test('incr keeps the existing TTL', async () => {
        const s = uniqueStore('incr-ttl');
        await put(s, 'n', '5', { ttl: 100 });
        assert.equal(text(await incr(s, 'n', 1)), '6');
        const t = ttlHeader(await get(s, 'n'));
        assert.ok(t >= 99 && t <= 100, `X-Kvbus-TTL after incr ${t}`);
    });
});

describe('delete', () => {
    test('DELETE is 204 for a present key, then 404', async () => {
        const s = uniqueStore('delete');
        await put(s, 'k', 'v');
        assert.equal((await del(s, 'k')).status, 204);
        assertJsonError(await del(s, 'k'), 404, 'second delete');
        assertJsonError(await get(s, 'k'), 404, 'get after delete');
    });
});

describe('mget', () => {
    test('mget returns base64 values of present keys, absent ones left out',
        async () => {
            const s = uniqueStore('mget');
            const bin = Buffer.from([0, 1, 0xff, 0xfe, 0x80]);
            await put(s, 'a', 'alpha');
            await put(s, 'b/c', bin);
            await put(s, 'é', 'accent');
            await put(s, 'empty', '');
            const r = await mget(s,
                { keys: ['a', 'missing', 'b/c', 'é', 'empty'] });
            assert.equal(r.status, 200);
            assert.match(String(r.headers['content-type']),
                /^application\/json\b/);
            assert.deepEqual(json(r), {
                values: {
                    a: Buffer.from('alpha').toString('base64'),
                    'b/c': bin.toString('base64'),
                    é: Buffer.from('accent').toString('base64'),
                    empty: '',
                },
            });
        });

    test('mget with no keys or only absent keys returns no values',
        async () => {
            const s = uniqueStore('mget-none');
            assert.deepEqual(json(await mget(s, { keys: [] })),
                { values: {} });
            assert.deepEqual(json(await mget(s, { keys: ['x', 'y'] })),
                { values: {} });
        });

    test('mget with bad JSON is 400', async () => {
        const s = uniqueStore('mget-badjson');
        for (const body of ['{', 'not json', '', '{"keys":["a",]}']) {
            assertJsonError(await mget(s, body), 400,
                `body ${JSON.stringify(body)}`);
        }
    });

    test('mget with keys not an array of strings is 400', async () => {
        const s = uniqueStore('mget-badkeys');
        const bodies = [{ keys: 'a' }, { keys: [1, 2] }, { keys: ['a', null] },
            { keys: [['a']] }, {}, [], 'string', { keys: { a: 1 } }];
        for (const body of bodies) {
            assertJsonError(await mget(s, body), 400,
                `body ${JSON.stringify(body)}`);
        }
    });

    test('mget with an invalid key is 400', async () => {
        const s = uniqueStore('mget-badkey');
        assertJsonError(await mget(s, { keys: ['ok', ''] }), 400, 'empty key');
        assertJsonError(await mget(s, { keys: ['a\u0001b'] }), 400,
            'control character');
        assertJsonError(await mget(s, { keys: ['x'.repeat(MAX_KEY_BYTES + 1)] }),
            400, 'key too long');
    });
});

describe('listing keys', () => {
    test('paging 250 keys with limit=7 returns every key exactly once',
        async () => {
            const s = uniqueStore('keys-page');
            const want = [];
            for (let i = 0; i < 250; i++) want.push(`p/${String(i).padStart(3, '0')}`);
            const others = ['q/1', 'q/2', 'P/upper', 'x'];
            for (let i = 0; i < want.length; i += 25) {
                await Promise.all(want.slice(i, i + 25).map(
                    (k) => put(s, k, 'v')));
            }
            await Promise.all(others.map((k) => put(s, k, 'v')));

            const { keys, pages, lastPage } =
                await listAllKeys(s, { prefix: 'p/', limit: 7 });
            const seen = new Set(keys);
            assert.equal(keys.length, seen.size,
                'a key was returned twice across pages');
            assert.deepEqual([...seen].sort(), want);
            // listAllKeys checks every page holds at most limit keys.
            assert.ok(pages >= Math.ceil(250 / 7),
                `limit=7 gave only ${pages} pages for 250 keys`);
            assert.ok(lastPage.cursor === undefined || lastPage.cursor === null,
                `last page cursor must be absent or null, got ${JSON.stringify(lastPage.cursor)}`);

            const all = await listAllKeys(s, { limit: 100 });
            assert.deepEqual(all.keys.sort(), [...want, ...others].sort());
        });

    test('a listing without limit or prefix returns all keys', async () => {
        const s = uniqueStore('keys-all');
        await put(s, 'one', '1');
        await put(s, 'two', '2');
        const r = await keysPage(s);
        assert.equal(r.status, 200);
        assert.match(String(r.headers['content-type']),
            /^application\/json\b/);
        const body = json(r);
        assert.deepEqual(body.keys.sort(), ['one', 'two']);
        assert.ok(body.cursor === undefined || body.cursor === null);
    });

    test('an empty store lists no keys', async () => {
        const s = uniqueStore('keys-empty');
        const { keys } = await listAllKeys(s);
        assert.deepEqual(keys, []);
    });

    test('the prefix is taken literally (*?[%_\\. are ordinary)', async () => {
        const s = uniqueStore('keys-literal');
        const keys = ['a*b', 'a?b', 'a[b]', 'a%b', 'a_b', 'a\\b', 'a.b',
            'aXb', 'ab', 'a', 'a^b', 'a{b}'];
        for (const k of keys) assert.equal((await put(s, k, 'v')).status, 204);
        const cases = {
            'a*': ['a*b'], 'a?': ['a?b'], 'a[': ['a[b]'], 'a%': ['a%b'],
            'a_': ['a_b'], 'a\\': ['a\\b'], 'a.': ['a.b'], 'a^': ['a^b'],
            'a{': ['a{b}'], '*': [], '%': [], '_': [],
            a: [...keys].sort(), ab: ['ab'],
        };
        for (const [prefix, want] of Object.entries(cases)) {
            const got = (await listAllKeys(s, { prefix })).keys.sort();
            assert.deepEqual(got, want.sort(), `prefix ${JSON.stringify(prefix)}`);
        }
    });

    test('a bad limit is 400', async () => {
        const s = uniqueStore('keys-badlimit');
        await put(s, 'k', 'v');
        for (const l of ['-1', 'abc', '1.5', '99999999999999999999']) {
            assertJsonError(await keysPage(s, `limit=${l}`), 400, `limit=${l}`);
        }
    });

    test('a bad cursor is 400', async () => {
        const s = uniqueStore('keys-badcursor');
        await put(s, 'k', 'v');
        for (const c of ['not-a-cursor', '%FF%FE', '-1']) {
            assertJsonError(await keysPage(s, `cursor=${c}`), 400,
                `cursor=${c}`);
        }
    });
});

describe('stores', () => {
    test('DELETE /v1/kv/{s} clears only that store', async () => {
        const s1 = uniqueStore('clear');
        const s2 = uniqueStore('keep');
        for (const k of ['a', 'b', 'c/d']) {
            await put(s1, k, 'one');
            await put(s2, k, 'two');
        }
        const r = await request('DELETE', `/v1/kv/${s1}`);
        assert.equal(r.status, 204);
        assert.deepEqual((await listAllKeys(s1)).keys, []);
        assertJsonError(await get(s1, 'a'), 404, 'cleared key');
        assert.deepEqual((await listAllKeys(s2)).keys.sort(), ['a', 'b', 'c/d']);
        assert.equal(text(await get(s2, 'a')), 'two');
        // The cleared store still works.
        assert.equal((await put(s1, 'a', 'again')).status, 204);
        assert.equal(text(await get(s1, 'a')), 'again');
    });

    test('GET /v1/kv lists stores with name, backend and healthy',
        async () => {
            const s = uniqueStore('listed');
            await put(s, 'k', 'v');
            const r = await request('GET', '/v1/kv');
            assert.equal(r.status, 200);
            assert.match(String(r.headers['content-type']),
                /^application\/json\b/);
            const { stores } = json(r);
            assert.ok(Array.isArray(stores));
            const byName = new Map(stores.map((x) => [x.name, x]));
            for (const name of ['default', 'notified', s]) {
                const st = byName.get(name);
                assert.ok(st, `store ${name} is listed`);
                assert.equal(st.backend, BACKEND, `backend of ${name}`);
                assert.equal(st.healthy, true, `healthy of ${name}`);
            }
        });

    test('unconfigured stores are created on first use and isolated',
        async () => {
            const s1 = uniqueStore('iso-a');
            const s2 = uniqueStore('iso-b');
            assert.equal((await put(s1, 'same', 'value-1')).status, 204);
            assert.equal((await put(s2, 'same', 'value-2')).status, 204);
            assert.equal(text(await get(s1, 'same')), 'value-1');
            assert.equal(text(await get(s2, 'same')), 'value-2');
            await del(s1, 'same');
            assert.equal(text(await get(s2, 'same')), 'value-2');
            assert.equal(text(await incr(s1, 'n', 1)), '1');
            assert.equal(text(await incr(s2, 'n', 10)), '10');
        });

    test('the configured default store serves keys', async () => {
        const k = uniqueStore('default-key');
        assert.equal((await put('default', k, 'v')).status, 204);
        assert.equal(text(await get('default', k)), 'v');
        assert.equal((await del('default', k)).status, 204);
    });

    test('a bad store name is 400', async () => {
        const bad = ['a%20b', 'a*', 'x'.repeat(65), 'a%2Fb', '%C3%A9', 'a:b'];
        for (const name of bad) {
            assertJsonError(await request('PUT', `/v1/kv/${name}/k`,
                { body: 'v' }), 400, `PUT in store ${name}`);
            assertJsonError(await request('GET', `/v1/kv/${name}/k`), 400,
                `GET in store ${name}`);
            assertJsonError(await request('GET', `/v1/kv/${name}`), 400,
                `keys of store ${name}`);
        }
        // 64 characters of the allowed set is fine.
        const ok = ('ok-_.' + uniqueStore('x')).padEnd(64, 'z').slice(0, 64);
        assert.equal((await request('PUT', `/v1/kv/${ok}/k`,
            { body: 'v' })).status, 204);
    });
});

describe('key encoding', () => {
    test('a%2Fb and a/b are the same key', async () => {
        const s = uniqueStore('slash');
        assert.equal((await request('PUT', `/v1/kv/${s}/a%2Fb`,
            { body: 'slash' })).status, 204);
        const g = await request('GET', `/v1/kv/${s}/a/b`);
        assert.equal(g.status, 200);
        assert.equal(text(g), 'slash');
        assert.equal((await request('PUT', `/v1/kv/${s}/a/b`,
            { body: 'two' })).status, 204);
        assert.equal(text(await request('GET', `/v1/kv/${s}/a%2fb`)), 'two');
        assert.deepEqual((await listAllKeys(s)).keys, ['a/b']);
    });

    test('dot segments, double slashes, plus and UTF-8 are kept verbatim',
        async () => {
            const s = uniqueStore('verbatim');
            // raw path suffix -> the decoded key it must be stored under
            const cases = [
                ['..', '..'],
                ['a/../b', 'a/../b'],
                ['a/./b', 'a/./b'],
                ['a//b', 'a//b'],
                ['a+b', 'a+b'],
                ['%C3%A9', 'é'],
                ['a%20b', 'a b'],
                ['q%3Fx', 'q?x'],
                ['h%23x', 'h#x'],
                ['100%25', '100%'],
                ['%E2%82%AC%F0%9F%98%80', '€😀'],
            ];
            for (const [i, [raw]] of cases.entries()) {
                const r = await request('PUT', `/v1/kv/${s}/${raw}`,
                    { body: `v${i}` });
                assert.equal(r.status, 204, `PUT ${raw}: ${text(r)}`);
            }
            const { keys } = await listAllKeys(s);
            assert.deepEqual(keys.sort(), cases.map(([, k]) => k).sort());
            for (const [i, [raw, key]] of cases.entries()) {
                const viaRaw = await request('GET', `/v1/kv/${s}/${raw}`);
                assert.equal(text(viaRaw), `v${i}`, `GET ${raw}`);
                const viaEnc = await get(s, key);
                assert.equal(text(viaEnc), `v${i}`, `GET encoded ${key}`);
            }
            // Nothing was normalised into another key.
            assertJsonError(await request('GET', `/v1/kv/${s}/b`), 404, 'b');
            assertJsonError(await request('GET', `/v1/kv/${s}/a/b`), 404, 'a/b');
        });

    test('%2E%2E is the key ".." and + is not a space', async () => {
        const s = uniqueStore('dots');
        await request('PUT', `/v1/kv/${s}/..`, { body: 'dotdot' });
        assert.equal(text(await request('GET', `/v1/kv/${s}/%2E%2E`)),
            'dotdot');
        assert.equal(text(await request('GET', `/v1/kv/${s}/%2e%2e`)),
            'dotdot');
        await request('PUT', `/v1/kv/${s}/a+b`, { body: 'plus' });
        assertJsonError(await request('GET', `/v1/kv/${s}/a%20b`), 404,
            'plus decoded as space');
        assert.equal(text(await request('GET', `/v1/kv/${s}/a%2Bb`)), 'plus');
    });

    test('bad percent-encoding in a key is 400', async () => {
        const s = uniqueStore('badpct');
        for (const raw of ['%zz', '%4', 'a%', 'a%4g', '%%41']) {
            assertJsonError(await request('PUT', `/v1/kv/${s}/${raw}`,
                { body: 'v' }), 400, `PUT ${raw}`);
            assertJsonError(await request('GET', `/v1/kv/${s}/${raw}`), 400,
                `GET ${raw}`);
        }
        assert.deepEqual((await listAllKeys(s)).keys, []);
    });

    test('a key decoding to invalid UTF-8 or a control character is 400',
        async () => {
            const s = uniqueStore('badkey');
            const bad = ['%00', 'a%00b', '%01', '%7F', '%0A', '%1F',
                '%FF', '%C3', '%C3%28', '%C0%AF', '%ED%A0%80', '%F8%88%80%80%80'];
            for (const raw of bad) {
                assertJsonError(await request('PUT', `/v1/kv/${s}/${raw}`,
                    { body: 'v' }), 400, `PUT ${raw}`);
                assertJsonError(await request('GET', `/v1/kv/${s}/${raw}`), 400,
                    `GET ${raw}`);
            }
            assert.deepEqual((await listAllKeys(s)).keys, []);
        });

    test('a key of max_key_bytes is fine; one byte more is 400',
        async () => {
            const s = uniqueStore('keylen');
            const ok = 'k'.repeat(MAX_KEY_BYTES);
            assert.equal((await put(s, ok, 'v')).status, 204);
            assert.equal(text(await get(s, ok)), 'v');
            assertJsonError(await put(s, ok + 'k', 'v'), 400, '1025 bytes');
            // Bytes, not characters, and after decoding: 512 x "é" = 1024.
            const accents = 'é'.repeat(MAX_KEY_BYTES / 2);
            assert.equal((await put(s, accents, 'v')).status, 204);
            assertJsonError(await put(s, accents + 'x', 'v'), 400,
                '1025 bytes of UTF-8');
            assert.deepEqual((await listAllKeys(s)).keys.sort(),
                [accents, ok].sort());
        });

    test('a request target over max_uri_bytes is 414', async () => {
        const s = uniqueStore('longuri');
        const r = await request('GET', `/v1/kv/${s}/${'a'.repeat(9000)}`);
        assertJsonError(r, 414);
        const p = await request('PUT', `/v1/kv/${s}/${'a'.repeat(9000)}`,
            { body: 'v' });
        assertJsonError(p, 414, 'PUT');
        assert.equal((await request('GET', '/healthz')).status, 200);
    });
});

describe('value size limit', () => {
    test('a value of max_value_bytes is stored', async () => {
        const s = uniqueStore('maxval');
        const v = Buffer.alloc(MAX_VALUE_BYTES, 0x61);
        assert.equal((await put(s, 'k', v)).status, 204);
        assert.deepEqual((await get(s, 'k')).body, v);
    });

    test('a value over max_value_bytes is 413 and the old value stays',
        async () => {
            const s = uniqueStore('bigval');
            await put(s, 'k', 'old');
            const r = await put(s, 'k', Buffer.alloc(MAX_VALUE_BYTES + 1, 0x62));
            assertJsonError(r, 413);
            assert.equal(text(await get(s, 'k')), 'old');
            assertJsonError(await put(s, 'new',
                Buffer.alloc(MAX_VALUE_BYTES + 1, 0x62)), 413, 'new key');
            assertJsonError(await get(s, 'new'), 404, 'oversized value stored');
        });

    test('an announced Content-Length too large is 413 before the body',
        async () => {
            const s = uniqueStore('biglen');
            await put(s, 'k', 'old');
            // Headers only: the server must answer without waiting for
            // the 10 MB it was promised.
            const head = rawRequest('PUT', kvPath(s, 'k'), {
                headers: { 'Content-Length': String(10 * 1024 * 1024) },
            });
            const { data } = await rawExchange(head, {
                timeoutMs: 3000,
                until: (b) => parseResponses(b).length > 0,
            });
            const [res] = parseResponses(data);
            assert.ok(res, `no response before the body: ${data}`);
            assertJsonError(res, 413);
            assert.equal(text(await get(s, 'k')), 'old');
        });

    test('a chunked body over max_value_bytes is 413 and stores nothing',
        async () => {
            const s = uniqueStore('bigchunk');
            await put(s, 'k', 'old');
            // Exactly max_value_bytes in chunks, then (once the server has
            // read them) a one-byte chunk too many and the last chunk. The
            // pause lets the server read everything before it refuses, so
            // its answer cannot be lost to a TCP reset.
            const chunk = Buffer.alloc(16384, 0x63);
            const parts = [rawRequest('PUT', kvPath(s, 'k'), {
                headers: { 'Transfer-Encoding': 'chunked' },
            })];
            for (let sent = 0; sent < MAX_VALUE_BYTES; sent += chunk.length) {
                parts.push(Buffer.from(chunk.length.toString(16) + '\r\n'),
                    chunk, Buffer.from('\r\n'));
            }
            const { data } = await rawExchange(parts, {
                timeoutMs: 3000,
                later: '1\r\nx\r\n0\r\n\r\n',
                until: (b) => parseResponses(b).length > 0,
            });
            const [res] = parseResponses(data);
            assert.ok(res, `no response: ${data}`);
            assertJsonError(res, 413);
            assert.equal(text(await get(s, 'k')), 'old');
        });
});
