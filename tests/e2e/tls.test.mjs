// TLS e2e tests: a kvbusd of its own (KVBUSD) serving https and wss with a
// self-signed certificate made here with the openssl command, then curl,
// Node's https client (keep-alive, pipelining, a 60 KB body, chunked
// upload) and the npm `ws` client against it; plain-text and stalled
// clients on the TLS port; a client that trusts another CA; and bad TLS
// configuration, which must make kvbusd exit with status 2.
//
// Waits are on events; the only time bounds are generous liveness limits.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

import { parseResponses } from './lib.mjs';
import {
    WsClient, httpRequest, metricValue, nextId, startKvbusd, withTimeout,
} from './wslib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KVBUSD = process.env.KVBUSD ??
    path.resolve(HERE, '../../build/kvbusd');

const HEADER_TIMEOUT_MS = 1000; // the server's header_timeout_ms here
const LIVENESS_MS = 10000;      // generous bound for "it did happen"

/* Runs a command; resolves with {code, stdout, stderr}, never rejects. */
function run(cmd, args, opts = {}) {
    return new Promise((resolve) => {
        execFile(cmd, args, { timeout: 60000, ...opts }, (err, stdout, stderr) => {
            resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
        });
    });
}

/* A self-signed certificate for 127.0.0.1 in dir: {cert, key} paths. */
async function makeCert(dir, name) {
    const cert = path.join(dir, `${name}.crt`);
    const key = path.join(dir, `${name}.key`);
    const r = await run('openssl', [
        'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
        '-keyout', key, '-out', cert,
    ]);
    assert.equal(r.code, 0, `openssl req failed: ${r.stderr}`);
    return { cert, key };
}

/* Resolves with kvbusd's exit {code, signal, stderr} for these flags. */
function runKvbusd(flags) {
    return new Promise((resolve) => {
        const env = {};
        for (const [k, v] of Object.entries(process.env)) {
            if (!k.startsWith('KVBUS_')) env[k] = v;
        }
        const proc = spawn(KVBUSD, ['--server.listen=127.0.0.1:1', ...flags],
            { env, stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        proc.stderr.on('data', (c) => { stderr += c.toString(); });
        const timer = setTimeout(() => proc.kill('SIGKILL'), LIVENESS_MS);
        proc.on('exit', (code, signal) => {
            clearTimeout(timer);
            resolve({ code, signal, stderr });
        });
    });
}

/* One https request with a per-call agent option; resolves like httpRequest,
 * plus reused (whether the agent's socket was reused). */
function httpsRequest(base, method, reqPath, { body, agent, ca, headers = {},
    chunks } = {}) {
    const u = new URL(base);
    return new Promise((resolve, reject) => {
        const hdrs = { ...headers };
        if (body !== undefined) hdrs['content-length'] = Buffer.byteLength(body);
        const req = https.request({
            host: u.hostname, port: Number(u.port), method, path: reqPath,
            headers: hdrs, agent, ca,
        }, (res) => {
            const parts = [];
            res.on('data', (c) => parts.push(c));
            res.on('end', () => resolve({
                status: res.statusCode, headers: res.headers,
                body: Buffer.concat(parts), reused: req.reusedSocket,
            }));
            res.on('error', reject);
        });
        req.on('error', reject);
        if (chunks) {
            for (const c of chunks) req.write(c);
        } else if (body !== undefined) {
            req.write(body);
        }
        req.end();
    });
}

/*
 * Opens a TLS connection trusting ca, writes data, and resolves with
 * everything read until until(buffer) is true or the peer closes.
 */
function tlsExchange(port, ca, data, until) {
    return new Promise((resolve, reject) => {
        const parts = [];
        const sock = tls.connect({ host: '127.0.0.1', port, ca });
        const finish = () => {
            sock.destroy();
            resolve(Buffer.concat(parts));
        };
        sock.on('secureConnect', () => sock.write(data));
        sock.on('data', (c) => {
            parts.push(c);
            if (until(Buffer.concat(parts))) finish();
        });
        sock.on('end', finish);
        sock.on('error', reject);
    });
}

/*
 * A raw TCP connection to port that writes data and resolves with
 * {data, closedAfterMs} once the server closes it (or rejects after
 * LIVENESS_MS).
 */
function rawUntilClosed(port, data) {
    const p = new Promise((resolve) => {
        const parts = [];
        const t0 = Date.now();
        const sock = net.connect({ host: '127.0.0.1', port });
        sock.on('connect', () => { if (data) sock.write(data); });
        sock.on('data', (c) => parts.push(c));
        const done = () => resolve({
            data: Buffer.concat(parts), closedAfterMs: Date.now() - t0,
        });
        sock.on('close', done);
        sock.on('error', () => {});
    });
    return withTimeout(p, LIVENESS_MS, 'the server to close the connection');
}

describe('TLS', () => {
    let dir;
    let good;
    let other;
    let ca;
    let srv;

    before(async () => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-tls-'));
        good = await makeCert(dir, 'server');
        other = await makeCert(dir, 'other');
        ca = fs.readFileSync(good.cert, 'utf8');
        srv = await startKvbusd(KVBUSD, [
            `--server.tls_cert=${good.cert}`,
            `--server.tls_key=${good.key}`,
            `--server.header_timeout_ms=${HEADER_TIMEOUT_MS}`,
            '--server.max_value_bytes=65536',
            '--server.log_level=warn',
        ], { ca });
    });

    after(async () => {
        if (srv) {
            const exit = await srv.stop();
            assert.deepEqual(exit, { code: 0, signal: null },
                `kvbusd exit after SIGTERM; stderr: ${srv.stderr()}`);
        }
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    async function metrics() {
        const r = await httpRequest(srv.url, 'GET', '/metrics', { ca });
        assert.equal(r.status, 200);
        return r.body.toString();
    }

    test('curl with --cacert: PUT then GET over https', async () => {
        const key = nextId('curl');
        const put = await run('curl', ['-sS', '--cacert', good.cert, '-X', 'PUT',
            '--data-binary', 'over tls', '-o', '/dev/null', '-w', '%{http_code}',
            `${srv.url}/v1/kv/default/${key}`]);
        assert.equal(put.code, 0, put.stderr);
        assert.match(put.stdout, /^20[04]$/);
        const get = await run('curl', ['-sS', '--cacert', good.cert,
            `${srv.url}/v1/kv/default/${key}`]);
        assert.equal(get.code, 0, get.stderr);
        assert.equal(get.stdout, 'over tls');
    });

    test('Node https: keep-alive reuses one session, a 60 KB body round-trips', async () => {
        const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca });
        try {
            const key = nextId('big');
            const big = Buffer.alloc(60 * 1024, 'x');
            for (let i = 0; i < big.length; i += 97) big[i] = 0x30 + (i % 10);
            const put = await httpsRequest(srv.url, 'PUT', `/v1/kv/default/${key}`,
                { body: big, agent });
            assert.ok(put.status === 204 || put.status === 200, String(put.status));
            let reused = 0;
            for (let i = 0; i < 10; i++) {
                const r = await httpsRequest(srv.url, 'GET', `/v1/kv/default/${key}`,
                    { agent });
                assert.equal(r.status, 200);
                assert.ok(r.body.equals(big), 'the 60 KB value came back intact');
                if (r.reused) reused += 1;
            }
            assert.ok(reused >= 9, `keep-alive socket reused ${reused} of 10 times`);
        } finally {
            agent.destroy();
        }
    });

    test('Node https: a chunked upload is stored whole', async () => {
        const key = nextId('chunked');
        const parts = ['first,', 'second,', 'x'.repeat(20000), ',last'];
        const put = await httpsRequest(srv.url, 'PUT', `/v1/kv/default/${key}`,
            { chunks: parts, ca, headers: { 'transfer-encoding': 'chunked' } });
        assert.ok(put.status === 204 || put.status === 200, String(put.status));
        const get = await httpsRequest(srv.url, 'GET', `/v1/kv/default/${key}`, { ca });
        assert.equal(get.status, 200);
        assert.equal(get.body.toString(), parts.join(''));
    });

    test('pipelined requests on one TLS connection are answered in order', async () => {
        const key = nextId('pipe');
        const host = `Host: 127.0.0.1:${srv.port}`;
        const reqs = [
            `PUT /v1/kv/default/${key} HTTP/1.1\r\n${host}\r\nContent-Length: 3\r\n\r\none`,
            `GET /v1/kv/default/${key} HTTP/1.1\r\n${host}\r\n\r\n`,
            `GET /v1/kv/default/${key}-absent HTTP/1.1\r\n${host}\r\n\r\n`,
            `GET /healthz HTTP/1.1\r\n${host}\r\n\r\n`,
        ];
        const buf = await withTimeout(tlsExchange(srv.port, ca, reqs.join(''),
            (b) => parseResponses(b).length >= 4), LIVENESS_MS, 'four responses');
        const res = parseResponses(buf);
        assert.ok(res[0].status === 204 || res[0].status === 200, String(res[0].status));
        assert.equal(res[1].status, 200);
        assert.equal(res[1].body.toString(), 'one');
        assert.equal(res[2].status, 404);
        assert.equal(res[3].status, 200);
    });

    test('wss: subscribe, publish, receive', async () => {
        const url = `${srv.url.replace(/^https/, 'wss')}/v1/ws`;
        const sub = await WsClient.open(url, { ca });
        const pub = await WsClient.open(url, { ca });
        try {
            const topic = nextId('tls.topic');
            const ok = await sub.subscribe([topic]);
            assert.equal(ok.type, 'subscribed', JSON.stringify(ok));
            const sent = await pub.call('publish', { topic, data: 'secret hello' });
            assert.notEqual(sent.type, 'error', JSON.stringify(sent));
            const m = await sub.takeMessage(topic);
            assert.equal(m.data, 'secret hello');
        } finally {
            await sub.close();
            await pub.close();
        }
    });

    test('a plain-HTTP client on the TLS port is closed and counted; the server still serves', async () => {
        const before = metricValue(await metrics(), 'kvbus_tls_handshake_failures_total');
        const r = await rawUntilClosed(srv.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        assert.ok(!r.data.toString('latin1').startsWith('HTTP/'),
            'no plain-text HTTP answer on the TLS port');
        const garbage = await rawUntilClosed(srv.port, Buffer.alloc(300, 0xee));
        assert.ok(garbage.closedAfterMs < LIVENESS_MS);
        const m = await metrics();
        assert.ok(metricValue(m, 'kvbus_tls_handshake_failures_total') >= before + 2,
            'both failed handshakes counted');
        assert.ok(metricValue(m, 'kvbus_tls_handshakes_total') > 0);
        const h = await httpRequest(srv.url, 'GET', '/healthz', { ca });
        assert.equal(h.status, 200);
    });

    test('a client that stalls halfway through the handshake is closed by header_timeout_ms', async () => {
        // The first bytes of a TLS record announcing a ClientHello, then
        // nothing more.
        const partial = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]);
        const r = await rawUntilClosed(srv.port, partial);
        assert.ok(r.closedAfterMs >= HEADER_TIMEOUT_MS / 2,
            `closed after ${r.closedAfterMs} ms, not at once`);
        const h = await httpRequest(srv.url, 'GET', '/healthz', { ca });
        assert.equal(h.status, 200);
    });

    test('a client trusting another CA refuses the certificate', async () => {
        const otherCa = fs.readFileSync(other.cert, 'utf8');
        await assert.rejects(
            httpRequest(srv.url, 'GET', '/healthz', { ca: otherCa }),
            (e) => /CERT|SIGN|VERIFY|ISSUER/i.test(String(e.code ?? e.message)),
        );
        const curl = await run('curl', ['-sS', '--cacert', other.cert, `${srv.url}/healthz`]);
        assert.notEqual(curl.code, 0, 'curl must refuse the certificate');
    });

    describe('bad TLS configuration exits with status 2', () => {
        test('key of another certificate', async () => {
            const r = await runKvbusd([`--server.tls_cert=${good.cert}`,
                `--server.tls_key=${other.key}`]);
            assert.equal(r.code, 2, r.stderr);
            assert.match(r.stderr, /tls_key/);
        });
        test('certificate file that is not PEM', async () => {
            const junk = path.join(dir, 'junk.pem');
            fs.writeFileSync(junk, 'not a certificate\n');
            const r = await runKvbusd([`--server.tls_cert=${junk}`,
                `--server.tls_key=${good.key}`]);
            assert.equal(r.code, 2, r.stderr);
            assert.match(r.stderr, /tls_cert: .*junk\.pem/);
        });
        test('unreadable key file', async () => {
            const r = await runKvbusd([`--server.tls_cert=${good.cert}`,
                `--server.tls_key=${path.join(dir, 'missing.key')}`]);
            assert.equal(r.code, 2, r.stderr);
            assert.match(r.stderr, /tls_key: cannot read .*missing\.key/);
        });
        test('certificate without key', async () => {
            const r = await runKvbusd([`--server.tls_cert=${good.cert}`]);
            assert.equal(r.code, 2, r.stderr);
            assert.match(r.stderr, /tls_key: missing/);
        });
    });
});
