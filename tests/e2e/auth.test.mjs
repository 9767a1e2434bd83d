// API tokens (docs/security.md): a private kvbusd started with a tokens
// file, whatever backend tests/e2e/run serves.
//
// - every route but /healthz and the dashboard's files answers 401 JSON
//   with no data without a token or with a wrong one, WWW-Authenticate
//   included; the route list below mirrors the route table;
// - a read-only token reads (GET, HEAD, keys, mget) and gets 403 on every
//   change (PUT, conditional PUT, DELETE, incr, ttl, clear);
// - store patterns: `cache*` allows cache and cache-eu, not default, with
//   the store name compared after percent-decoding;
// - publish over HTTP needs topic:pub; on the WebSocket the token comes
//   from the upgrade's Authorization header or a first auth frame,
//   subscribe needs topic:sub covering the whole pattern, publish
//   topic:pub, refusals are `forbidden` frames naming the topic and the
//   connection stays open; an unauthenticated connection gets
//   `unauthorized` frames and is closed with 1008 after three of them or
//   after the 10 s deadline; KV change topics follow the same rules;
// - kvbus_auth_failures_total counts refusals by reason; SIGHUP reloads
//   the file and closes WebSocket connections of removed tokens;
// - bad tokens files stop kvbusd at start with exit 2, naming file and
//   line but never the token; no token value ever appears in the log.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startKvbusd, waitFor, httpRequest, withTimeout, WsClient, metricValue }
    from './wslib.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KVBUSD = process.env.KVBUSD ?? path.join(ROOT, 'build/kvbusd');
const AUTH_TIMEOUT_MS = 10000; // SRV_WS_AUTH_TIMEOUT_MS
const START_TIMEOUT_MS = 5000; // a bad file must stop kvbusd within this

const token = (label) => `${label}-${crypto.randomBytes(12).toString('hex')}`;
const TOKENS = {
    admin: token('admin'),
    reader: token('reader'),
    cache: token('cache'),
    pubsub: token('pubsub'),
    doomed: token('doomed'),
};
const SECRET = `secret-value-${crypto.randomBytes(6).toString('hex')}`;

function tokensFile(omit = []) {
    const lines = {
        admin: `admin ${TOKENS.admin} admin kv:read:* kv:write:* topic:sub:* topic:pub:*`,
        reader: `reader ${TOKENS.reader} kv:read:*`,
        cache: `cache ${TOKENS.cache} kv:read:cache* kv:write:cache*`,
        pubsub: `pubsub\t${TOKENS.pubsub}  topic:sub:news.* topic:pub:news.eu topic:sub:kv.cache*`,
        doomed: `doomed ${TOKENS.doomed} topic:sub:*`,
    };
    return ['# kvbus e2e tokens', '',
        ...Object.entries(lines).filter(([k]) => !omit.includes(k)).map(([, l]) => l),
        ''].join('\n');
}

const bearer = (name) => ({ authorization: `Bearer ${TOKENS[name]}` });

// Every route of server/srv_routes.c that needs a token, with a method it
// accepts. /healthz, / and /dashboard/{file} are open by design; /v1/ws is
// tested below (without a header it is authenticated by its first frame).
const GUARDED = [
    ['GET', '/v1/kv'],
    ['HEAD', '/v1/kv'],
    ['GET', '/v1/kv/default'],
    ['POST', '/v1/kv/default?op=mget', '{"keys":["k"]}'],
    ['DELETE', '/v1/kv/default'],
    ['GET', '/v1/kv/default/k'],
    ['HEAD', '/v1/kv/default/k'],
    ['PUT', '/v1/kv/default/k', 'overwritten'],
    ['DELETE', '/v1/kv/default/k'],
    ['POST', '/v1/kv/default/n?op=incr'],
    ['POST', '/v1/pub/news.eu', 'hello'],
    ['GET', '/v1/topics'],
    ['GET', '/v1/stats'],
    ['GET', '/readyz'],
    ['GET', '/metrics'],
];

/* Asserts a 401 or 403 JSON error carrying nothing but the error. */
function assertRefused(res, status, what) {
    assert.equal(res.status, status, `${what}: got ${res.status} ${res.body}`);
    if (status === 401) {
        assert.match(String(res.headers['www-authenticate']), /^Bearer realm="kvbus"/, what);
    }
    if (res.body.length === 0) return; // HEAD
    assert.match(res.headers['content-type'], /^application\/json/, what);
    const doc = JSON.parse(res.body.toString());
    assert.deepEqual(Object.keys(doc).sort(), ['error', 'message'], what);
    assert.equal(doc.error, status === 401 ? 'unauthorized' : 'forbidden', what);
    assert.ok(!res.body.toString().includes(SECRET), `${what}: the body leaks data`);
}

describe('API tokens', { timeout: 60000 }, () => {
    let dir, file, node;
    const clients = [];
    const call = (method, p, opts = {}) => httpRequest(node.url, method, p, opts);
    const wsUrl = () => node.url.replace(/^http/, 'ws') + '/v1/ws';
    const openWs = async (opts) => {
        const c = await WsClient.open(wsUrl(), opts);
        clients.push(c);
        return c;
    };

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-auth-'));
        file = path.join(dir, 'tokens');
        fs.writeFileSync(file, tokensFile(), { mode: 0o600 });
        node = await startKvbusd(KVBUSD, [`--server.tokens_file=${file}`,
            '--store.cache.notify=true', '--server.log_level=debug']);
        const put = await call('PUT', '/v1/kv/default/k',
            { body: SECRET, headers: bearer('admin') });
        assert.equal(put.status, 204);
    });

    after(async () => {
        for (const c of clients) await c.close().catch(() => {});
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
        if (node) {
            // a clean exit: no sanitizer report, no leak (ASan builds)
            const { code } = await node.stop();
            assert.equal(code, 0, `kvbusd exit: ${node.stderr().slice(-2000)}`);
            assert.doesNotMatch(node.stderr(), /AddressSanitizer|LeakSanitizer|runtime error/);
        }
    });

    test('every guarded route without a token is 401 with no data', async () => {
        for (const [method, p, body] of GUARDED) {
            assertRefused(await call(method, p, { body }), 401, `${method} ${p}`);
        }
    });

    test('a wrong token, another scheme or an empty bearer is 401 on every route', async () => {
        for (const auth of [`Bearer ${token('nobody')}`, `Bearer ${TOKENS.admin}x`,
            `Basic ${TOKENS.admin}`, 'Bearer ']) {
            for (const [method, p, body] of GUARDED) {
                const res = await call(method, p, { body, headers: { authorization: auth } });
                assertRefused(res, 401, `${method} ${p} with ${auth.split(' ')[0]}`);
                assert.match(res.headers['www-authenticate'], /error="invalid_token"/);
            }
        }
        // nothing was changed by the refused requests
        const get = await call('GET', '/v1/kv/default/k', { headers: bearer('admin') });
        assert.equal(get.body.toString(), SECRET);
    });

    test('/healthz and the dashboard files are open and carry no data', async () => {
        const h = await call('GET', '/healthz');
        assert.equal(h.status, 200);
        assert.deepEqual(JSON.parse(h.body), { status: 'ok' });
        const stats = JSON.parse((await call('GET', '/v1/stats', { headers: bearer('admin') })).body);
        for (const p of ['/', '/dashboard/dashboard.js', '/dashboard/dashboard.css']) {
            const res = await call('GET', p);
            assert.equal(res.status, 200, p);
            const text = res.body.toString();
            assert.ok(!text.includes(SECRET), `${p} holds a value`);
            assert.ok(!text.includes(stats.node), `${p} names the node`);
        }
    });

    test('a read-only token reads and gets 403 on every change', async () => {
        const h = bearer('reader');
        const get = await call('GET', '/v1/kv/default/k', { headers: h });
        assert.equal(get.status, 200);
        assert.equal(get.body.toString(), SECRET);
        assert.equal((await call('HEAD', '/v1/kv/default/k', { headers: h })).status, 200);
        const keys = await call('GET', '/v1/kv/default?prefix=k', { headers: h });
        assert.equal(keys.status, 200);
        assert.ok(JSON.parse(keys.body).keys.includes('k'));
        const mget = await call('POST', '/v1/kv/default?op=mget',
            { body: '{"keys":["k"]}', headers: h });
        assert.equal(mget.status, 200);
        assert.equal(Buffer.from(JSON.parse(mget.body).values.k, 'base64').toString(), SECRET);
        assert.equal((await call('GET', '/readyz', { headers: h })).status, 200);

        const etag = get.headers.etag;
        for (const [method, p, body, extra] of [
            ['PUT', '/v1/kv/default/k', 'changed'],
            ['PUT', '/v1/kv/default/k', 'changed', { 'if-match': etag }],
            ['PUT', '/v1/kv/default/new', 'x', { 'if-none-match': '*' }],
            ['DELETE', '/v1/kv/default/k'],
            ['DELETE', '/v1/kv/default/k', undefined, { 'if-match': etag }],
            ['POST', '/v1/kv/default/n?op=incr'],
            ['POST', '/v1/kv/default/k?op=ttl&ttl=5'],
            ['DELETE', '/v1/kv/default'],
        ]) {
            const res = await call(method, p, { body, headers: { ...h, ...extra } });
            assertRefused(res, 403, `reader ${method} ${p}`);
            assert.match(JSON.parse(res.body).message, /kv:write/);
        }
        for (const p of ['/v1/kv', '/v1/stats', '/v1/topics', '/metrics']) {
            assertRefused(await call('GET', p, { headers: h }), 403, `reader GET ${p}`);
        }
        const after = await call('GET', '/v1/kv/default/k', { headers: h });
        assert.equal(after.body.toString(), SECRET);
        assert.equal(after.headers['x-kvbus-ttl'], undefined);
    });

    test('store pattern cache* allows cache and cache-eu, not other stores', async () => {
        const h = bearer('cache');
        for (const store of ['cache', 'cache-eu', 'cach%65']) {
            assert.equal((await call('PUT', `/v1/kv/${store}/a`, { body: 'v', headers: h })).status,
                204, store);
            assert.equal((await call('GET', `/v1/kv/${store}/a`, { headers: h })).status, 200, store);
        }
        for (const store of ['default', 'cach', 'ca', '%64efault', 'xcache']) {
            assertRefused(await call('GET', `/v1/kv/${store}/a`, { headers: h }), 403, `GET ${store}`);
            assertRefused(await call('PUT', `/v1/kv/${store}/a`, { body: 'v', headers: h }), 403,
                `PUT ${store}`);
        }
        // a decoded newline stays out of the log's one-line events
        assertRefused(await call('GET', '/v1/kv/x%0Ainjected/a', { headers: h }), 403, 'newline');
        assert.ok(!node.stderr().includes('\ninjected'), 'a store name broke a log line');
        // a bad escape is a 400 once the token is known to be valid
        assert.equal((await call('GET', '/v1/kv/cache%zz/a', { headers: h })).status, 400);
        assertRefused(await call('GET', '/v1/kv/cache%zz/a'), 401, 'bad escape without token');
    });

    test('HTTP publish needs topic:pub on the topic', async () => {
        const ok = await call('POST', '/v1/pub/news.eu', { body: 'x', headers: bearer('pubsub') });
        assert.equal(ok.status, 202);
        assertRefused(await call('POST', '/v1/pub/news.us', { body: 'x', headers: bearer('pubsub') }),
            403, 'news.us');
        assertRefused(await call('POST', '/v1/pub/news.eu', { body: 'x', headers: bearer('reader') }),
            403, 'reader publish');
    });

    test('WebSocket with the header: subscribe needs a covering topic:sub, publish topic:pub', async () => {
        const c = await openWs({ headers: bearer('pubsub') });
        assert.equal((await c.subscribe(['news.*', 'news.eu'])).type, 'subscribed');
        assert.equal((await c.subscribe(['news.eu.*'])).type, 'subscribed');
        for (const pattern of ['news*', '*', 'other']) {
            const r = await c.subscribe([pattern]);
            assert.equal(r.error, 'forbidden', pattern);
            assert.equal(r.topic, pattern);
        }
        // one forbidden pattern refuses the whole frame
        const mixed = await c.subscribe(['news.us', 'sport']);
        assert.equal(mixed.error, 'forbidden');
        assert.equal(mixed.topic, 'sport');

        const pub = await c.call('publish', { topic: 'news.eu', data: 'from ws' });
        assert.equal(pub.type, 'published');
        assert.equal((await c.takeMessage('news.eu')).data, 'from ws');
        const denied = await c.call('publish', { topic: 'news.us', data: 'no' });
        assert.equal(denied.error, 'forbidden');
        assert.equal(denied.topic, 'news.us');
        assert.equal((await c.call('ping')).type, 'pong', 'the connection stays open');
        assert.equal(c.closeInfo, null);
    });

    test('WebSocket with a wrong header is refused at the upgrade with 401', async () => {
        await assert.rejects(WsClient.open(wsUrl(), { headers: { authorization: `Bearer ${token('x')}` } }),
            /HTTP 401/);
    });

    test('WebSocket auth frame: unauthorized until a valid token, then live', async () => {
        const c = await openWs();
        const early = await c.call('subscribe', { topics: ['news.eu'] });
        assert.equal(early.error, 'unauthorized');
        const bad = await c.call('auth', { token: token('wrong') });
        assert.equal(bad.error, 'unauthorized');
        const ok = await c.call('auth', { token: TOKENS.pubsub });
        assert.deepEqual([ok.type, ok.name], ['authenticated', 'pubsub']);
        assert.equal((await c.subscribe(['news.*'])).type, 'subscribed');
        const res = await call('POST', '/v1/pub/news.eu', { body: 'after auth', headers: bearer('admin') });
        assert.equal(res.status, 202);
        assert.equal((await c.takeMessage('news.eu')).data, 'after auth');
        assert.equal((await c.subscribe(['*'])).error, 'forbidden');
    });

    test('WebSocket: three refused frames before auth close the connection with 1008', async () => {
        const c = await openWs();
        assert.equal((await c.call('ping')).error, 'unauthorized');
        c.send('not json');
        assert.equal((await c.take((f) => f.error === 'unauthorized')).type, 'error');
        assert.equal((await c.call('auth', { token: 'short' })).error, 'unauthorized');
        const { code } = await withTimeout(c.closed, 5000, 'close after 3 refusals');
        assert.equal(code, 1008);
    });

    test('WebSocket: no auth frame within 10 s closes with 1008', { timeout: AUTH_TIMEOUT_MS + 5000 }, async () => {
        const c = await openWs();
        const started = Date.now();
        const { code } = await withTimeout(c.closed, AUTH_TIMEOUT_MS + 3000, 'auth deadline');
        assert.equal(code, 1008);
        assert.ok(Date.now() - started >= AUTH_TIMEOUT_MS - 500, 'closed before the deadline');
    });

    test('KV change topics follow the topic rules', async () => {
        const c = await openWs({ headers: bearer('pubsub') });
        assert.equal((await c.subscribe(['kv.cache'])).type, 'subscribed');
        assert.equal((await c.subscribe(['kv.*'])).error, 'forbidden');
        assert.equal((await c.subscribe(['kv.default'])).error, 'forbidden');
        const put = await call('PUT', '/v1/kv/cache/note', { body: 'n', headers: bearer('cache') });
        assert.equal(put.status, 204);
        const m = await c.takeMessage('kv.cache');
        assert.deepEqual(JSON.parse(m.data), { store: 'cache', op: 'put', key: 'note' });
    });

    test('kvbus_auth_failures_total counts refusals by reason', async () => {
        const res = await call('GET', '/metrics', { headers: bearer('admin') });
        assert.equal(res.status, 200);
        const text = res.body.toString();
        for (const reason of ['missing', 'invalid', 'forbidden']) {
            const v = metricValue(text, `kvbus_auth_failures_total{reason="${reason}"}`);
            assert.ok(v > 0, `${reason}: ${v}`);
        }
    });

    test('SIGHUP reloads the file: a removed token gets 401 and its socket closes', async () => {
        const c = await openWs({ headers: bearer('doomed') });
        assert.equal((await c.subscribe(['anything'])).type, 'subscribed');
        fs.writeFileSync(file, tokensFile(['doomed']));
        node.proc.kill('SIGHUP');
        const { code } = await withTimeout(c.closed, 5000, 'close after the token was removed');
        assert.equal(code, 1008);
        assertRefused(await call('GET', '/readyz', { headers: bearer('doomed') }), 401, 'doomed');
        assert.equal((await call('GET', '/readyz', { headers: bearer('reader') })).status, 200);

        // a bad file is refused and the tokens in use stay
        fs.writeFileSync(file, 'admin short kv:read:*\n');
        node.proc.kill('SIGHUP');
        await waitFor(() => node.stderr().includes('reload refused'), { what: 'reload refused in the log' });
        assert.equal((await call('GET', '/readyz', { headers: bearer('reader') })).status, 200);
    });

    test('the log names tokens but never holds a token value', async () => {
        const log = node.stderr();
        assert.match(log, /token reader denied kv:write/);
        for (const [name, value] of Object.entries(TOKENS)) {
            assert.ok(!log.includes(value), `the log holds the ${name} token`);
        }
    });
});

describe('bad tokens files stop kvbusd with exit 2', () => {
    let dir;
    before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-auth-bad-')); });
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    const good = token('good'), other = token('other');
    const cases = [
        ['unknown permission', `a ${good} kv:read:*\nb ${other} kv:delete:*\n`, ':2: ', /unknown permission/],
        ['short token', `# c\na tooshort-1234 kv:read:*\n`, ':2: ', /13 characters/],
        ['duplicate token', `a ${good} kv:read:*\nb ${good} kv:read:*\n`, ':2: ', /same token value/],
        ['duplicate name', `a ${good} kv:read:*\na ${other} kv:read:*\n`, ':2: ', /name already used/],
        ['no permissions', `a ${good}\n`, ':1: ', /no permissions/],
        ['no tokens', '# only a comment\n', ': ', /no tokens/],
    ];
    for (const [what, text, where, why] of cases) {
        test(what, async () => {
            const f = path.join(dir, what.replace(/ /g, '-'));
            fs.writeFileSync(f, text, { mode: 0o600 });
            const r = await runKvbusd([`--server.tokens_file=${f}`]);
            assert.equal(r.code, 2, `${what}: ${r.stderr}`);
            assert.ok(r.stderr.includes(f + where), `${what}: ${r.stderr}`);
            assert.match(r.stderr, why);
            for (const t of [good, other, 'tooshort-1234']) {
                assert.ok(!r.stderr.includes(t), `${what}: the error shows a token`);
            }
        });
    }

    test('unreadable file', async () => {
        const f = path.join(dir, 'missing');
        const r = await runKvbusd([`--server.tokens_file=${f}`]);
        assert.equal(r.code, 2);
        assert.match(r.stderr, new RegExp(`${f}: cannot read`));
    });
});

/* Runs kvbusd on a free-for-all port expecting it to stop by itself. */
function runKvbusd(flags) {
    return new Promise((resolve) => {
        execFile(KVBUSD, ['--server.listen=127.0.0.1:1', ...flags],
            { timeout: START_TIMEOUT_MS, env: {} },
            (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stderr }));
    });
}
