// Helpers for the kvbus e2e suite: an HTTP client that sends request paths
// verbatim (node:http, keep-alive), a raw-socket exchange for malformed or
// pipelined requests with a small HTTP/1.1 response parser, unique store
// names, and assertions shared by the test files. No npm dependencies.
//
// Key paths are never built with fetch() or URL: WHATWG URL parsing
// normalises `..`, `%2E` and `//`, and those are exactly what the key
// encoding tests need to send.
//
// KVBUS_URL may be https://: the suite then speaks TLS to the server under
// test, trusting the PEM certificate named by KVBUS_TEST_CA (tests/e2e/run
// makes one with KVBUS_TEST_TLS=1).

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import assert from 'node:assert/strict';

export const BASE = process.env.KVBUS_URL ?? 'http://127.0.0.1:7400';
export const BACKEND = process.env.KVBUS_TEST_BACKEND ?? 'memory';

const base = new URL(BASE);
export const TLS = base.protocol === 'https:';
export const TLS_CA = process.env.KVBUS_TEST_CA
    ? fs.readFileSync(process.env.KVBUS_TEST_CA) : undefined;
export const HOST = base.hostname;
export const PORT = Number(base.port || (TLS ? 443 : 80));

// Must match max_value_bytes in the config tests/e2e/run writes.
export const MAX_VALUE_BYTES = 65536;
export const MAX_KEY_BYTES = 1024;
export const MAX_URI_BYTES = 8192;

// Known XXH3-64 vectors (computed with libxxhash's XXH3_64bits).
export const XXH3 = {
    empty: '2d06800538d394c2',
    kvbus: '7043f528fc756ca0',
    hello: '9555e8555c62dcfd',
    n579: 'effb21f1bd1d1287',
    nul: 'c44bdff4074eecdb',      // one 0x00 byte
    all256: '9408a4433b952d71',   // bytes 0x00..0xff in order
};

const client = TLS ? https : http;
const agent = new client.Agent({ keepAlive: true, maxSockets: 16, ca: TLS_CA });

/*
 * A raw connection to the server under test: plain TCP, or TLS trusting
 * TLS_CA when KVBUS_URL is https. Wait for RAW_READY before relying on
 * the connection; data written earlier is sent once it is ready.
 */
export const RAW_READY = TLS ? 'secureConnect' : 'connect';
export function connectRaw() {
    return TLS ? tls.connect({ host: HOST, port: PORT, ca: TLS_CA })
        : net.connect({ host: HOST, port: PORT });
}

/*
 * One HTTP request. path is sent exactly as given. body may be a string or
 * a Buffer; headers a plain object. Resolves to {status, headers, body}
 * with body a Buffer (empty for HEAD). Errors after the response has been
 * read (a server closing early) are ignored.
 */
export function request(method, path, { headers = {}, body } = {}) {
    return new Promise((resolve, reject) => {
        const hdrs = { ...headers };
        if (body !== undefined && hdrs['content-length'] === undefined &&
            hdrs['transfer-encoding'] === undefined) {
            hdrs['content-length'] = Buffer.byteLength(body);
        }
        let answered = false;
        const req = client.request(
            { host: HOST, port: PORT, method, path, headers: hdrs, agent },
            (res) => {
                const chunks = [];
                res.on('data', (c) => chunks.push(c));
                res.on('end', () => {
                    answered = true;
                    resolve({
                        status: res.statusCode,
                        headers: res.headers,
                        body: Buffer.concat(chunks),
                    });
                });
                res.on('error', (e) => { if (!answered) reject(e); });
            });
        req.on('error', (e) => { if (!answered) reject(e); });
        if (body !== undefined) req.write(body);
        req.end();
    });
}

export function text(res) {
    return res.body.toString('utf8');
}

export function json(res) {
    return JSON.parse(res.body.toString('utf8'));
}

let storeCounter = 0;

/* A store name no other test (or test run) uses: [A-Za-z0-9_.-]{1,64}. */
export function uniqueStore(label = 't') {
    const clean = label.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 30);
    const rnd = Math.random().toString(36).slice(2, 8);
    storeCounter += 1;
    return `${clean}-${process.pid}-${storeCounter}-${rnd}`;
}

/* Percent-encodes every byte of a key except unreserved characters. */
export function encodeKey(key) {
    return encodeURIComponent(key).replace(/[!'()*]/g,
        (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/* /v1/kv/{store}/{key} with the key fully percent-encoded. */
export function kvPath(store, key, query = '') {
    return `/v1/kv/${store}/${encodeKey(key)}${query ? '?' + query : ''}`;
}

export function put(store, key, value, { ttl, headers } = {}) {
    const q = ttl === undefined ? '' : `ttl=${ttl}`;
    return request('PUT', kvPath(store, key, q), { body: value, headers });
}

export function get(store, key) {
    return request('GET', kvPath(store, key));
}

export function del(store, key, headers) {
    return request('DELETE', kvPath(store, key), { headers });
}

export function incr(store, key, delta) {
    return request('POST', kvPath(store, key, `op=incr&delta=${delta}`));
}

export function setTtl(store, key, ttl) {
    return request('POST', kvPath(store, key, `op=ttl&ttl=${ttl}`));
}

export function mget(store, body) {
    const b = typeof body === 'string' ? body : JSON.stringify(body);
    return request('POST', `/v1/kv/${store}?op=mget`, {
        body: b, headers: { 'content-type': 'application/json' },
    });
}

/* One page of keys; query is the raw query string. */
export function keysPage(store, query = '') {
    return request('GET', `/v1/kv/${store}${query ? '?' + query : ''}`);
}

/*
 * Every key of a store with the given prefix, following cursors. Returns
 * {keys, pages, lastPage}; asserts each page is 200 JSON with a keys array.
 * A page holds at most limit keys (docs/api.md); it may hold fewer, even
 * none, while a cursor is still returned.
 */
export async function listAllKeys(store, { prefix, limit } = {}) {
    const keys = [];
    let cursor = null;
    let pages = 0;
    let lastPage = null;
    for (;;) {
        const q = [];
        if (prefix !== undefined) q.push(`prefix=${encodeKey(prefix)}`);
        if (limit !== undefined) q.push(`limit=${limit}`);
        if (cursor !== null) q.push(`cursor=${encodeKey(cursor)}`);
        const res = await keysPage(store, q.join('&'));
        assert.equal(res.status, 200, `keys page: ${text(res)}`);
        const page = json(res);
        assert.ok(Array.isArray(page.keys), 'keys page has a keys array');
        if (limit !== undefined) {
            assert.ok(page.keys.length <= limit,
                `page of ${page.keys.length} keys exceeds limit ${limit}`);
        }
        keys.push(...page.keys);
        pages += 1;
        lastPage = page;
        if (page.cursor === undefined || page.cursor === null ||
            page.cursor === '') {
            break;
        }
        assert.equal(typeof page.cursor, 'string', 'cursor is a string');
        cursor = page.cursor;
        assert.ok(pages < 10000, 'keys paging does not terminate');
    }
    return { keys, pages, lastPage };
}

/*
 * Asserts res is an error with the given status and a JSON body
 * {"error": "<code>", "message": "<sentence>"}.
 */
export function assertJsonError(res, status, what = '') {
    const label = what ? `${what}: ` : '';
    assert.equal(res.status, status,
        `${label}expected ${status}, got ${res.status} ${res.body}`);
    assert.match(String(res.headers['content-type'] ?? ''),
        /^application\/json\b/, `${label}error content-type`);
    const body = json(res);
    assert.equal(typeof body.error, 'string', `${label}error code`);
    assert.ok(body.error.length > 0, `${label}error code is empty`);
    assert.equal(typeof body.message, 'string', `${label}error message`);
    assert.ok(body.message.length > 0, `${label}error message is empty`);
}

/* Asserts an ETag header is a quoted 16-digit lowercase hex string. */
export function assertEtagShape(etag) {
    assert.match(String(etag), /^"[0-9a-f]{16}"$/, `ETag shape: ${etag}`);
}

export function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

/* ------------------------------------------------------------------ */
/* Raw sockets                                                          */

/*
 * Writes each chunk of data (string or Buffer, or an array of them) to a
 * fresh connection and collects everything the server sends until it
 * closes, `until(buffer)` returns true, or timeoutMs passes. `later`, if
 * given, is written delayMs after data (so the server has read data
 * first). Socket errors (reset after an early answer) end the exchange
 * without failing it. Returns {data: Buffer, closed: bool}.
 */
export function rawExchange(data, {
    timeoutMs = 3000, until, endWrite, later, delayMs = 100,
} = {}) {
    return new Promise((resolve) => {
        const chunks = [];
        let done = false;
        let closed = false;
        const sock = connectRaw();
        const finish = () => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            sock.destroy();
            resolve({ data: Buffer.concat(chunks), closed });
        };
        const timer = setTimeout(finish, timeoutMs);
        sock.on(RAW_READY, () => {
            for (const part of [].concat(data)) sock.write(part);
            if (later !== undefined) {
                setTimeout(() => {
                    if (!done) sock.write(later);
                }, delayMs);
            }
            if (endWrite) sock.end();
        });
        sock.on('data', (c) => {
            chunks.push(c);
            if (until && until(Buffer.concat(chunks))) finish();
        });
        sock.on('end', () => { closed = true; finish(); });
        sock.on('close', () => { closed = true; finish(); });
        sock.on('error', () => finish());
    });
}

/*
 * Parses as many complete HTTP/1.1 responses as buf holds. Bodies are
 * framed by Content-Length or chunked encoding; responses to HEAD and
 * 1xx/204/304 carry none (pass headFlags[i] = true for a HEAD answer).
 * Returns an array of {status, headers, body}.
 */
export function parseResponses(buf, headFlags = []) {
    const out = [];
    let pos = 0;
    for (;;) {
        const end = buf.indexOf('\r\n\r\n', pos);
        if (end < 0) break;
        const head = buf.subarray(pos, end).toString('latin1').split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
        if (!m) throw new Error(`bad status line: ${JSON.stringify(head[0])}`);
        const status = Number(m[1]);
        const headers = {};
        for (const line of head.slice(1)) {
            const i = line.indexOf(':');
            headers[line.slice(0, i).trim().toLowerCase()] =
                line.slice(i + 1).trim();
        }
        let p = end + 4;
        let body = Buffer.alloc(0);
        const noBody = headFlags[out.length] || status < 200 ||
            status === 204 || status === 304;
        if (noBody) {
            // nothing
        } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
            const parts = [];
            let complete = false;
            for (;;) {
                const le = buf.indexOf('\r\n', p);
                if (le < 0) break;
                const size = parseInt(buf.subarray(p, le).toString(), 16);
                if (size === 0) {
                    const te = buf.indexOf('\r\n\r\n', le);
                    if (te < 0) break;
                    p = te + 4;
                    complete = true;
                    break;
                }
                if (le + 2 + size + 2 > buf.length) break;
                parts.push(buf.subarray(le + 2, le + 2 + size));
                p = le + 2 + size + 2;
            }
            if (!complete) break;
            body = Buffer.concat(parts);
        } else if (headers['content-length'] !== undefined) {
            const n = Number(headers['content-length']);
            if (p + n > buf.length) break;
            body = buf.subarray(p, p + n);
            p += n;
        }
        out.push({ status, headers, body });
        pos = p;
    }
    return out;
}

/* A raw request: method, target, extra header lines, optional body. */
export function rawRequest(method, target, { headers = {}, body } = {}) {
    const lines = [`${method} ${target} HTTP/1.1`, `Host: ${HOST}:${PORT}`];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    const b = body === undefined ? null : Buffer.from(body);
    if (b !== null && headers['Content-Length'] === undefined) {
        lines.push(`Content-Length: ${b.length}`);
    }
    const head = Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
    return b === null ? head : Buffer.concat([head, b]);
}
