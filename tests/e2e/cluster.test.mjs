// Several kvbusd nodes on one Redis (SPEC section 7, "Providers"; docs/cluster.md):
//
// - fan-out: three nodes (n1, n2, n3) with pubsub.provider = redis; a
//   WebSocket subscriber on each node receives every message published on
//   any node, by HTTP POST /v1/pub/{topic} and by WebSocket publish,
//   exactly once and in publish order per publisher; prefix patterns work
//   across nodes; KV change notifications of a store shared in Redis
//   (notify = true) reach the other nodes; the kvbus envelope is what
//   Redis carries;
// - Nuxeo interop: a node with format = nuxeo receives
//   `PUBLISH nuxeo:cacheinval othernode:cacheName/key` as data
//   `cacheName/key` from node `othernode`, drops its own and malformed
//   messages, and publishes `<node_id>:<payload>` on `nuxeo:cacheinval`;
// - outage: redis-server is killed (SIGKILL); while it is down, HTTP
//   publish answers 503 and /readyz says the provider is down; once it is
//   back on the same port every WebSocket subscriber gets a `reset` and
//   messages flow again, without restarting kvbusd.
//
// The file starts its own redis-server (tests/tools/start-redis) and kvbusd
// processes (KVBUSD, default build/kvbusd), so it runs the same whatever
// backend tests/e2e/run serves; it talks to Redis with a small RESP client
// over node:net.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startKvbusd, waitFor, httpRequest, WsClient } from './wslib.mjs';
import { parseResp } from './resplib.mjs';

const execFileP = promisify(execFile);

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const KVBUSD = process.env.KVBUSD ?? path.join(ROOT, 'build/kvbusd');
const START_REDIS = path.join(ROOT, 'tests/tools/start-redis');

const NODES = ['n1', 'n2', 'n3'];
const NUXEO_NODE = 'nx';
const PER_SOURCE = 15;          // messages per node and per way of publishing
const QUIET_MS = 300;           // after the last expected frame: no duplicate comes
const WAIT_MS = 5000;           // bound of one wait for a frame
const RECOVERY_LIMIT_MS = 10000; // nodes ready again this long after Redis is back
const STOP_LIMIT_MS = 10000;

/* ------------------------------------------------------------------ */
/* Redis from the test's side                                           */

/*
 * A minimal Redis client: cmd() resolves with the next reply; pub/sub
 * pushes (["message"|"pmessage", ...]) go to `pushes` instead, read with
 * takePush().
 */
class Resp {
    static async connect(url) {
        const u = new URL(url);
        const c = new Resp(net.connect({ host: u.hostname, port: Number(u.port) }));
        await new Promise((resolve, reject) => {
            c.sock.once('connect', resolve);
            c.sock.once('error', reject);
        });
        return c;
    }

    constructor(sock) {
        this.sock = sock;
        this.buf = Buffer.alloc(0);
        this.waiting = [];
        this.pushes = [];
        this.pushWaiters = [];
        sock.on('data', (chunk) => {
            this.buf = Buffer.concat([this.buf, chunk]);
            for (;;) {
                const r = parseResp(this.buf, 0);
                if (!r) break;
                this.buf = this.buf.subarray(r.end);
                const v = r.value;
                const kind = Array.isArray(v) && Buffer.isBuffer(v[0]) ? v[0].toString() : '';
                if (kind === 'message' || kind === 'pmessage') {
                    this.pushes.push(v.map((x) => x.toString('latin1')));
                    for (const w of this.pushWaiters.splice(0)) w();
                    continue;
                }
                const w = this.waiting.shift();
                if (!w) continue;
                if (v instanceof Error) w.reject(v);
                else w.resolve(v);
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

    /* The first push for which pred is true (removed), waiting for it. */
    async takePush(pred, what) {
        const deadline = Date.now() + WAIT_MS;
        for (;;) {
            const i = this.pushes.findIndex(pred);
            if (i >= 0) return this.pushes.splice(i, 1)[0];
            const left = deadline - Date.now();
            if (left <= 0) {
                throw new Error(`no Redis message ${what}; got ${JSON.stringify(this.pushes)}`);
            }
            await new Promise((resolve) => {
                const t = setTimeout(resolve, left);
                this.pushWaiters.push(() => { clearTimeout(t); resolve(); });
            });
        }
    }

    close() {
        this.sock.destroy();
    }
}

/* Starts redis-server (tests/tools/start-redis): {url, pid, dir, port}. */
async function startRedis({ dir, port } = {}) {
    const args = port ? ['--port', String(port)] : [];
    if (dir) args.push(dir);
    const { stdout } = await execFileP(START_REDIS, args, { timeout: 20000 });
    const v = Object.fromEntries(stdout.trim().split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return {
        url: v.REDIS_URL, pid: Number(v.REDIS_PID), dir: v.REDIS_DIR,
        port: Number(new URL(v.REDIS_URL).port),
    };
}

function signal(pid, sig) {
    try {
        process.kill(pid, sig);
    } catch {
        /* gone already */
    }
}

function alive(pid) {
    try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] !== 'Z';
    } catch {
        return false;
    }
}

/* ------------------------------------------------------------------ */
/* Nodes                                                                */

function nodeFlags(id, redisUrl, extra = []) {
    return [
        '--server.log_level=warn',
        `--server.node_id=${id}`,
        '--pubsub.provider=redis',
        `--pubsub.url=${redisUrl}`,
        '--store.shared.backend=redis',
        `--store.shared.url=${redisUrl}`,
        '--store.shared.notify=true',
        ...extra,
    ];
}

async function publishHttp(node, topic, data) {
    return httpRequest(node.url, 'POST', `/v1/pub/${topic}`, { body: data });
}

async function readyz(node) {
    const r = await httpRequest(node.url, 'GET', '/readyz');
    return { status: r.status, body: JSON.parse(r.body.toString()) };
}

/* Every message frame ws received on topic so far (from its log). */
function messagesOn(ws, topic) {
    return ws.seen((f) => f.type === 'message' && f.topic === topic);
}

/* Waits until ws holds n messages on topic, then QUIET_MS more. */
async function settle(ws, topic, n, what) {
    await waitFor(() => messagesOn(ws, topic).length >= n,
        { timeoutMs: WAIT_MS, what: `${n} messages on ${topic} at ${what}` });
    await new Promise((r) => setTimeout(r, QUIET_MS));
}

/* ------------------------------------------------------------------ */

describe('cluster over Redis pub/sub (private redis-server, four kvbusd)', () => {
    let redis = null;
    let ownDir = null;
    const nodes = {};
    const subs = {};
    let nx = null;
    let rc = null;

    before(async () => {
        ownDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-e2e-cluster.'));
        redis = await startRedis({ dir: ownDir });
        const started = await Promise.all([
            ...NODES.map((id) => startKvbusd(KVBUSD, nodeFlags(id, redis.url))),
            startKvbusd(KVBUSD, nodeFlags(NUXEO_NODE, redis.url, ['--pubsub.format=nuxeo'])),
        ]);
        NODES.forEach((id, i) => { nodes[id] = started[i]; });
        nx = started[NODES.length];
        for (const n of [...Object.values(nodes), nx]) {
            await waitFor(async () => (await readyz(n)).status === 200,
                { timeoutMs: RECOVERY_LIMIT_MS, what: `${n.url} ready` });
        }
        for (const id of NODES) {
            subs[id] = await WsClient.open(nodes[id].url.replace(/^http/, 'ws') + '/v1/ws');
            const r = await subs[id].subscribe(['t', 'p.*', 'kv.shared']);
            assert.equal(r.type, 'subscribed', JSON.stringify(r));
        }
        rc = await Resp.connect(redis.url);
    });

    after(async () => {
        rc?.close();
        for (const ws of Object.values(subs)) await ws.close().catch(() => {});
        const exits = [];
        for (const n of [...Object.values(nodes), nx]) {
            if (n && n.proc.exitCode === null && n.proc.signalCode === null) {
                exits.push([n, await n.stop(STOP_LIMIT_MS).catch((error) => {
                    n.proc.kill('SIGKILL');
                    return { error: error.message };
                })]);
            }
        }
        if (redis) signal(redis.pid, 'SIGKILL');
        if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true });
        // A clean exit on SIGTERM (under ASan: no leak, no error report).
        for (const [n, e] of exits) {
            assert.deepEqual(e, { code: 0, signal: null },
                `kvbusd ${n.url} exit; stderr: ${n.stderr().slice(-3000)}`);
        }
    });

    test('every message published on any node reaches every node once, in order', async () => {
        const publishers = NODES.map(async (id) => {
            const ws = await WsClient.open(nodes[id].url.replace(/^http/, 'ws') + '/v1/ws');
            try {
                for (let i = 0; i < PER_SOURCE; i++) {
                    const r = await publishHttp(nodes[id], 't', `${id}-http-${i}`);
                    assert.equal(r.status, 202, `POST on ${id}: ${r.status} ${r.body}`);
                    const p = await ws.call('publish', { topic: 't', data: `${id}-ws-${i}` });
                    assert.equal(p.type, 'published', JSON.stringify(p));
                }
            } finally {
                await ws.close();
            }
        });
        await Promise.all(publishers);
        const total = NODES.length * PER_SOURCE * 2;
        for (const id of NODES) {
            await settle(subs[id], 't', total, id);
            const got = messagesOn(subs[id], 't');
            assert.equal(got.length, total, `${id} got ${got.length} messages, want ${total}`);
            assert.equal(new Set(got.map((m) => m.data)).size, total, `${id}: duplicates`);
            for (const origin of NODES) {
                const from = got.filter((m) => m.node === origin);
                for (const way of ['http', 'ws']) {
                    const datas = from.map((m) => m.data).filter((d) => d.startsWith(`${origin}-${way}-`));
                    const want = Array.from({ length: PER_SOURCE }, (_, i) => `${origin}-${way}-${i}`);
                    assert.deepEqual(datas, want, `${id}: order of ${origin}'s ${way} messages`);
                }
                const seqs = from.map((m) => m.seq);
                for (let i = 1; i < seqs.length; i++) {
                    assert.ok(seqs[i] > seqs[i - 1], `${id}: seq of ${origin} goes up: ${seqs}`);
                }
                assert.ok(from.every((m) => Number.isInteger(m.ts) && m.ts > 0), 'ts set');
            }
            assert.equal(subs[id].seen((f) => f.type === 'reset').length, 0, `${id}: no reset`);
        }
    });

    test('prefix patterns match topics published on other nodes', async () => {
        assert.equal((await publishHttp(nodes.n1, 'p.a', 'pa')).status, 202);
        assert.equal((await publishHttp(nodes.n3, 'p.b', 'pb')).status, 202);
        for (const id of NODES) {
            const a = await subs[id].takeMessage('p.a');
            assert.deepEqual([a.data, a.node], ['pa', 'n1']);
            const b = await subs[id].takeMessage('p.b');
            assert.deepEqual([b.data, b.node], ['pb', 'n3']);
        }
        await new Promise((r) => setTimeout(r, QUIET_MS));
        for (const id of NODES) {
            assert.equal(subs[id].seen((f) => f.type === 'message' && f.topic.startsWith('p.')).length, 2,
                `${id}: each pattern message once`);
        }
    });

    test('KV change notifications of a shared Redis store reach the other nodes', async () => {
        const r = await httpRequest(nodes.n2.url, 'PUT', '/v1/kv/shared/k1', { body: 'v' });
        assert.equal(r.status, 204);
        for (const id of NODES) {
            const m = await subs[id].takeMessage('kv.shared');
            assert.equal(m.node, 'n2');
            assert.deepEqual(JSON.parse(m.data), { store: 'shared', op: 'put', key: 'k1' });
        }
        const g = await httpRequest(nodes.n3.url, 'GET', '/v1/kv/shared/k1');
        assert.equal(g.status, 200);
        assert.equal(g.body.toString(), 'v');
    });

    test('Redis carries the versioned kvbus envelope on channel prefix + topic', async () => {
        const sc = await Resp.connect(redis.url);
        try {
            await sc.cmd('SUBSCRIBE', 'kvbus:wire');
            assert.equal((await publishHttp(nodes.n1, 'wire', 'bytes\nhere')).status, 202);
            const [, channel, payload] = await sc.takePush((m) => m[1] === 'kvbus:wire', 'on kvbus:wire');
            assert.equal(channel, 'kvbus:wire');
            assert.match(payload, /^kvbus1 n1 [1-9][0-9]* [1-9][0-9]*\nbytes\nhere$/);
        } finally {
            sc.close();
        }
    });

    test('Nuxeo format: invalidations from a Nuxeo node reach WebSocket subscribers', async () => {
        const ws = await WsClient.open(nx.url.replace(/^http/, 'ws') + '/v1/ws');
        try {
            assert.equal((await ws.subscribe(['cacheinval'])).type, 'subscribed');
            await rc.cmd('PUBLISH', 'nuxeo:cacheinval', 'no colon, so malformed');
            await rc.cmd('PUBLISH', 'nuxeo:cacheinval', `${NUXEO_NODE}:own message`);
            await rc.cmd('PUBLISH', 'nuxeo:cacheinval', 'othernode:cacheName/key');
            const m = await ws.takeMessage('cacheinval');
            assert.equal(m.data, 'cacheName/key');
            assert.equal(m.node, 'othernode');
            assert.equal(m.seq, 0);
            await new Promise((r) => setTimeout(r, QUIET_MS));
            assert.equal(ws.seen((f) => f.type === 'message').length, 1, 'own and malformed dropped');
            // kvbus-format nodes use their own channels: nothing crosses.
            for (const id of NODES) {
                assert.equal(subs[id].seen((f) => f.topic === 'cacheinval').length, 0);
            }
        } finally {
            await ws.close();
        }
    });

    test('Nuxeo format: a publish on the node reaches Redis as <node_id>:<payload>', async () => {
        const sc = await Resp.connect(redis.url);
        const ws = await WsClient.open(nx.url.replace(/^http/, 'ws') + '/v1/ws');
        try {
            await sc.cmd('SUBSCRIBE', 'nuxeo:cacheinval');
            assert.equal((await ws.subscribe(['cacheinval'])).type, 'subscribed');
            assert.equal((await publishHttp(nx, 'cacheinval', 'cacheName/k2')).status, 202);
            const [, channel, payload] = await sc.takePush((m) => m[1] === 'nuxeo:cacheinval',
                'on nuxeo:cacheinval');
            assert.equal(channel, 'nuxeo:cacheinval');
            assert.equal(payload, `${NUXEO_NODE}:cacheName/k2`);
            const local = await ws.takeMessage('cacheinval');
            assert.equal(local.data, 'cacheName/k2');
            await new Promise((r) => setTimeout(r, QUIET_MS));
            assert.equal(ws.seen((f) => f.type === 'message').length, 1, 'own publish delivered once');
        } finally {
            await ws.close();
            sc.close();
        }
    });

    test('Redis killed: 503 and /readyz down meanwhile, reset and recovery after', async (t) => {
        rc.close();
        rc = null;
        signal(redis.pid, 'SIGKILL');
        await waitFor(() => !alive(redis.pid), { timeoutMs: STOP_LIMIT_MS, what: 'redis exit' });

        // Publishes accepted before the node noticed may be lost for the
        // other nodes (at-most-once); refused ones are delivered nowhere.
        const refused = [];
        let probe = 0;
        const r = await waitFor(async () => {
            const data = `refused-${probe++}`;
            const p = await publishHttp(nodes.n1, 't', data);
            if (p.status !== 503) return null;
            refused.push(data);
            return p;
        }, { timeoutMs: WAIT_MS, what: 'a 503 publishing while Redis is down' });
        assert.equal(JSON.parse(r.body.toString()).error, 'unavailable');
        assert.ok(r.headers['retry-after'], 'Retry-After on the 503');
        const rz = await readyz(nodes.n1);
        assert.equal(rz.status, 503);
        assert.deepEqual(rz.body.pubsub, { provider: 'redis', healthy: false });
        refused.push('refused-ws');
        const wsPub = await subs.n2.call('publish', { topic: 't', data: 'refused-ws' });
        assert.equal(wsPub.type, 'error', JSON.stringify(wsPub));
        assert.equal(wsPub.error, 'unavailable');

        const down = performance.now();
        redis = await startRedis({ dir: redis.dir, port: redis.port });
        for (const id of NODES) {
            const reset = await subs[id].take((f) => f.type === 'reset',
                { timeoutMs: RECOVERY_LIMIT_MS, what: `a reset on ${id}` });
            assert.equal(reset.reason, 'provider reconnected');
        }
        for (const n of Object.values(nodes)) {
            await waitFor(async () => (await readyz(n)).status === 200,
                { timeoutMs: RECOVERY_LIMIT_MS, what: `${n.url} ready again` });
        }
        t.diagnostic(`all nodes ready ${Math.round(performance.now() - down)} ms after restarting redis`);

        const before = Object.fromEntries(NODES.map((id) => [id, messagesOn(subs[id], 't').length]));
        assert.equal((await publishHttp(nodes.n3, 't', 'after recovery')).status, 202);
        for (const id of NODES) {
            await settle(subs[id], 't', before[id] + 1, id);
            const got = messagesOn(subs[id], 't').slice(before[id]);
            assert.deepEqual(got.map((m) => [m.data, m.node]), [['after recovery', 'n3']]);
            const leaked = messagesOn(subs[id], 't').filter((m) => refused.includes(m.data));
            assert.deepEqual(leaked, [], `${id}: refused publishes delivered`);
        }
    });
});
