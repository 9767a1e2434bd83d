// Helpers for the WebSocket e2e tests (ws.test.mjs): a promise-based
// wrapper around the npm `ws` client that queues every frame the server
// sends, a hand-written WebSocket client on a raw TCP socket (handshake,
// masked frame encoder, server frame parser) for consumers that stop
// reading, a private kvbusd started with known limits, and small readers
// for /metrics and /proc/<pid>/status.
//
// Nothing here sleeps for a fixed time: waits are on events, and every
// wait has a timeout that only bounds a failure.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import WebSocket from 'ws';

import { BASE, TLS_CA } from './lib.mjs';

export const WS_URL = BASE.replace(/^http/, 'ws') + '/v1/ws';

const DEFAULT_WAIT_MS = 5000;

/* ------------------------------------------------------------------ */
/* Waiting                                                              */

/*
 * Resolves with promise's value, or rejects with an Error naming what was
 * awaited when ms pass first.
 */
export function withTimeout(promise, ms, what) {
    let timer;
    const limit = new Promise((_, reject) => {
        timer = setTimeout(
            () => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/*
 * Polls fn (sync or async) every intervalMs until it returns a truthy
 * value, which it resolves with; rejects after timeoutMs. For state that
 * has no event of its own (a gauge, a counter in /metrics). what (a
 * string, or a function returning one) names the condition in the error.
 */
export async function waitFor(fn, { timeoutMs = DEFAULT_WAIT_MS,
    intervalMs = 20, what = 'condition' } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        last = await fn();
        if (last) return last;
        if (Date.now() >= deadline) {
            const label = typeof what === 'function' ? what() : what;
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

/* ------------------------------------------------------------------ */
/* A `ws` client with an inbox                                          */

let idCounter = 0;

/* A request id no other request of this process uses. */
export function nextId(label = 'r') {
    idCounter += 1;
    return `${label}-${process.pid}-${idCounter}`;
}

/*
 * One WebSocket connection. Every text frame from the server is parsed and
 * kept, in order, in `log` (never emptied) and `inbox` (frames not yet
 * taken by take()). Non-JSON or binary frames are kept as
 * {type: '<unparsed>', raw}.
 */
export class WsClient {
    constructor(ws) {
        this.ws = ws;
        this.log = [];
        this.inbox = [];
        this.waiters = [];
        this.closeInfo = null;
        this.closed = new Promise((resolve) => {
            ws.on('close', (code, reason) => {
                this.closeInfo = { code, reason: reason.toString() };
                for (const w of this.waiters.splice(0)) {
                    w.reject(new Error(`connection closed (${code} ${reason}) while waiting for ${w.what}`));
                }
                resolve(this.closeInfo);
            });
        });
        ws.on('message', (data, isBinary) => {
            let frame;
            try {
                frame = isBinary ? { type: '<unparsed>', raw: data }
                    : JSON.parse(data.toString('utf8'));
            } catch {
                frame = { type: '<unparsed>', raw: data };
            }
            this.log.push(frame);
            this.inbox.push(frame);
            this.wake();
        });
        ws.on('error', () => {}); // surfaced through 'close'
    }

    /*
     * Opens a connection to url, sending headers with the upgrade request;
     * rejects on an HTTP answer other than 101. ca: the PEM certificate(s)
     * to trust for a wss:// url (default: the suite's, KVBUS_TEST_CA).
     */
    static open(url = WS_URL, { timeoutMs = DEFAULT_WAIT_MS, headers, ca = TLS_CA } = {}) {
        const ws = new WebSocket(url, { perMessageDeflate: false, headers, ca });
        const client = new WsClient(ws);
        const opened = new Promise((resolve, reject) => {
            ws.once('open', () => resolve(client));
            ws.once('unexpected-response', (req, res) => {
                reject(new Error(`upgrade refused: HTTP ${res.statusCode}`));
                req.destroy();
            });
            ws.once('error', reject);
        });
        return withTimeout(opened, timeoutMs, `open ${url}`);
    }

    wake() {
        for (const w of this.waiters.slice()) {
            const i = this.inbox.findIndex(w.pred);
            if (i >= 0) {
                const [frame] = this.inbox.splice(i, 1);
                this.waiters.splice(this.waiters.indexOf(w), 1);
                w.resolve(frame);
            }
        }
    }

    /*
     * Removes from the inbox and resolves with the first frame (in arrival
     * order) for which pred is true, waiting for it if needed.
     */
    take(pred, { timeoutMs = DEFAULT_WAIT_MS, what = 'a frame' } = {}) {
        const i = this.inbox.findIndex(pred);
        if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0]);
        if (this.closeInfo) {
            return Promise.reject(new Error(`connection closed (${this.closeInfo.code}) before ${what}`));
        }
        let waiter;
        const p = new Promise((resolve, reject) => {
            waiter = { pred, resolve, reject, what };
            this.waiters.push(waiter);
        });
        return withTimeout(p, timeoutMs, what).catch((e) => {
            const k = this.waiters.indexOf(waiter);
            if (k >= 0) this.waiters.splice(k, 1);
            const seen = this.inbox.slice(-5).map((f) => JSON.stringify(f).slice(0, 200));
            e.message += `; last frames in inbox: ${seen.join(' | ') || '(none)'}`;
            throw e;
        });
    }

    /* The next message frame on topic (any topic when omitted). */
    takeMessage(topic, opts = {}) {
        return this.take(
            (f) => f.type === 'message' && (topic === undefined || f.topic === topic),
            { what: `a message on ${topic ?? 'any topic'}`, ...opts });
    }

    /* Sends an object as JSON, or a string / Buffer as given. */
    send(frame, { binary = false } = {}) {
        const data = typeof frame === 'string' || Buffer.isBuffer(frame)
            ? frame : JSON.stringify(frame);
        this.ws.send(data, { binary });
    }

    /*
     * Sends {op, ...fields, id} with a fresh id and resolves with the frame
     * that echoes the id (a reply or an error).
     */
    call(op, fields = {}, opts = {}) {
        const id = nextId(op);
        this.send({ op, ...fields, id });
        return this.take((f) => f.id === id, { what: `the reply to ${op} ${id}`, ...opts });
    }

    /* subscribe, asserting the reply by the caller is left to call(). */
    subscribe(topics) {
        return this.call('subscribe', { topics });
    }

    unsubscribe(topics) {
        return this.call('unsubscribe', { topics });
    }

    /* Closes (normal closure) and resolves when the socket is gone. */
    close() {
        if (!this.closeInfo &&
            this.ws.readyState !== WebSocket.CLOSING &&
            this.ws.readyState !== WebSocket.CLOSED) {
            this.ws.close(1000);
        }
        return withTimeout(this.closed, DEFAULT_WAIT_MS, 'close');
    }

    /* Frames of the log matching pred. */
    seen(pred) {
        return this.log.filter(pred);
    }
}

/* ------------------------------------------------------------------ */
/* A WebSocket client on a raw TCP socket                               */

export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/* One client frame (FIN set, masked with a random key), as RFC 6455 5.2. */
export function encodeClientFrame(opcode, payload) {
    const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
    const len = body.length;
    let head;
    if (len < 126) {
        head = Buffer.alloc(2);
        head[1] = 0x80 | len;
    } else if (len < 65536) {
        head = Buffer.alloc(4);
        head[1] = 0x80 | 126;
        head.writeUInt16BE(len, 2);
    } else {
        head = Buffer.alloc(10);
        head[1] = 0x80 | 127;
        head.writeBigUInt64BE(BigInt(len), 2);
    }
    head[0] = 0x80 | opcode;
    const mask = crypto.randomBytes(4);
    const masked = Buffer.alloc(len);
    for (let i = 0; i < len; i++) masked[i] = body[i] ^ mask[i & 3];
    return Buffer.concat([head, mask, masked]);
}

/*
 * Parses the complete server frames at the start of buf. Returns
 * {frames: [{fin, opcode, payload, masked}], rest} where rest is the
 * incomplete tail. Server frames must not be masked; a masked one is
 * reported with masked = true so the caller can fail on it.
 */
export function parseServerFrames(buf) {
    const frames = [];
    let p = 0;
    for (;;) {
        if (buf.length - p < 2) break;
        const b0 = buf[p];
        const b1 = buf[p + 1];
        let len = b1 & 0x7f;
        let q = p + 2;
        if (len === 126) {
            if (buf.length - q < 2) break;
            len = buf.readUInt16BE(q);
            q += 2;
        } else if (len === 127) {
            if (buf.length - q < 8) break;
            len = Number(buf.readBigUInt64BE(q));
            q += 8;
        }
        const masked = (b1 & 0x80) !== 0;
        let mask = null;
        if (masked) {
            if (buf.length - q < 4) break;
            mask = buf.subarray(q, q + 4);
            q += 4;
        }
        if (buf.length - q < len) break;
        let payload = buf.subarray(q, q + len);
        if (mask) {
            payload = Buffer.from(payload);
            for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        }
        frames.push({ fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload, masked });
        p = q + len;
    }
    return { frames, rest: buf.subarray(p) };
}

/*
 * Connects to host:port, sends a version 13 upgrade for path and resolves,
 * once the 101 answer (with a correct Sec-WebSocket-Accept) is in, with
 * {sock, rest}: rest holds bytes that came after the answer's head. The
 * socket has no 'data' listener on return: the caller attaches one.
 */
export function rawWsConnect({ host, port, path = '/v1/ws',
    timeoutMs = DEFAULT_WAIT_MS } = {}) {
    const key = crypto.randomBytes(16).toString('base64');
    const expect = crypto.createHash('sha1').update(key + WS_GUID)
        .digest('base64');
    const p = new Promise((resolve, reject) => {
        const sock = net.connect({ host, port });
        let buf = Buffer.alloc(0);
        const onData = (c) => {
            buf = Buffer.concat([buf, c]);
            const end = buf.indexOf('\r\n\r\n');
            if (end < 0) return;
            sock.off('data', onData);
            sock.off('error', reject);
            sock.pause();
            const head = buf.subarray(0, end).toString('latin1');
            const lines = head.split('\r\n');
            if (!/^HTTP\/1\.1 101\b/.test(lines[0])) {
                sock.destroy();
                reject(new Error(`handshake refused: ${lines[0]}`));
                return;
            }
            const accept = lines.find((l) => /^sec-websocket-accept:/i.test(l));
            if (!accept || accept.split(':')[1].trim() !== expect) {
                sock.destroy();
                reject(new Error(`bad Sec-WebSocket-Accept: ${accept}`));
                return;
            }
            resolve({ sock, rest: buf.subarray(end + 4) });
        };
        sock.on('data', onData);
        sock.on('error', reject);
        sock.on('connect', () => {
            sock.write([
                `GET ${path} HTTP/1.1`,
                `Host: ${host}:${port}`,
                'Upgrade: websocket',
                'Connection: Upgrade',
                `Sec-WebSocket-Key: ${key}`,
                'Sec-WebSocket-Version: 13',
                '', '',
            ].join('\r\n'));
        });
    });
    return withTimeout(p, timeoutMs, `raw WebSocket handshake with ${host}:${port}`);
}

/* ------------------------------------------------------------------ */
/* A private kvbusd                                                     */

/* A free TCP port on 127.0.0.1 (bound then released). */
export function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
    });
}

/*
 * One HTTP request to base (a URL string, http: or https:) over agent.
 * ca: the PEM certificate(s) to trust for https. Resolves to
 * {status, headers, body: Buffer}.
 */
export function httpRequest(base, method, path, { body, agent, headers = {}, ca } = {}) {
    const u = new URL(base);
    const client = u.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
        const hdrs = { ...headers };
        if (body !== undefined) hdrs['content-length'] = Buffer.byteLength(body);
        const req = client.request({
            host: u.hostname, port: Number(u.port), method, path,
            headers: hdrs, agent, ca,
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({
                status: res.statusCode, headers: res.headers,
                body: Buffer.concat(chunks),
            }));
            res.on('error', reject);
        });
        req.on('error', reject);
        if (body !== undefined) req.write(body);
        req.end();
    });
}

/*
 * Starts binary with flags (plus --server.listen on a free port) and
 * resolves once /healthz answers 200 with {pid, port, url, proc, exited,
 * stop()}. KVBUS_* variables are removed from its environment so that only
 * the flags configure it; extraEnv is added. With ca (PEM text) the server
 * is expected to speak TLS (flags give it tls_cert and tls_key): url is
 * https and /healthz is checked trusting ca. stop() sends SIGTERM and
 * resolves with {code, signal} at exit.
 */
export async function startKvbusd(binary, flags, { extraEnv = {},
    timeoutMs = 10000, ca } = {}) {
    const port = await freePort();
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('KVBUS_')) env[k] = v;
    }
    Object.assign(env, extraEnv);
    const proc = spawn(binary,
        [`--server.listen=127.0.0.1:${port}`, ...flags],
        { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (c) => { stderr += c.toString(); });
    const exited = new Promise((resolve) => {
        proc.on('exit', (code, signal) => resolve({ code, signal }));
    });
    const url = `${ca ? 'https' : 'http'}://127.0.0.1:${port}`;
    let gone = null;
    exited.then((e) => { gone = e; });
    try {
        await waitFor(async () => {
            if (gone) {
                throw new Error(`kvbusd exited (${JSON.stringify(gone)}) before serving: ${stderr}`);
            }
            try {
                const r = await httpRequest(url, 'GET', '/healthz', { ca });
                return r.status === 200;
            } catch {
                return false;
            }
        }, { timeoutMs, intervalMs: 25, what: `kvbusd /healthz on ${url}` });
    } catch (e) {
        proc.kill('SIGKILL');
        throw e;
    }
    return {
        pid: proc.pid, port, url, proc, exited,
        stderr: () => stderr,
        async stop(graceMs = 10000) {
            if (!gone) proc.kill('SIGTERM');
            try {
                return await withTimeout(exited, graceMs, 'kvbusd exit after SIGTERM');
            } catch (e) {
                proc.kill('SIGKILL');
                throw e;
            }
        },
    };
}

/* VmRSS of pid in bytes, from /proc/<pid>/status. */
export function rssBytes(pid) {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
}

/*
 * The value of one unlabelled (or exactly labelled) sample in Prometheus
 * text, or undefined when absent. name may include a {label="..."} part.
 */
export function metricValue(textBody, name) {
    for (const line of textBody.split('\n')) {
        if (line.startsWith('#')) continue;
        const sp = line.lastIndexOf(' ');
        if (sp > 0 && line.slice(0, sp) === name) return Number(line.slice(sp + 1));
    }
    return undefined;
}
