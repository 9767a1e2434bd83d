/*
 * Helpers for the backend outage tests (redis.test.mjs, mongodb.test.mjs):
 * a PUT/GET load on one store of a private kvbusd, the checks each call of
 * that load must pass, and reads of the store's /metrics and /readyz.
 * It leaves out starting and killing servers; each test file does that.
 */
import assert from 'node:assert/strict';

import { text, json, assertJsonError, sleep } from './lib.mjs';
import { metricValue } from './wslib.mjs';

/*
 * The helpers for store `store` (backend `backend`). `call(base, method,
 * path, {body})` is the file's own bounded HTTP call, resolving to
 * {status, headers, body, ms, start} or {error, ms, start}; `workers` and
 * `pauseMs` shape the load.
 */
export function outageHelpers({ call, store, backend, workers, pauseMs }) {
    /* One sample of /metrics for the store. */
    async function storeMetric(base, family) {
        const r = await call(base, 'GET', '/metrics');
        assert.equal(r.status, 200, `GET /metrics: ${r.error ?? r.status}`);
        return metricValue(text(r), `${family}{store="${store}",backend="${backend}"}`);
    }

    /* /readyz: {status, body (parsed), store (the entry of the store)}. */
    async function readyz(base) {
        const r = await call(base, 'GET', '/readyz');
        assert.ok(!r.error, `GET /readyz: ${r.error}`);
        const body = json(r);
        return { status: r.status, body, store: body.stores.find((s) => s.name === store) };
    }

    /*
     * A PUT/GET loop of `workers` workers against the store until stop()
     * is called; every call is kept in `calls` ({op, start, ms, status, ...}).
     */
    function startLoad(base) {
        const calls = [];
        let running = true;
        const worker = async (w) => {
            for (let i = 0; running && i < 1e6; i++) {
                const key = `w${w}-${i % 50}`;
                const p = await call(base, 'PUT', `/v1/kv/${store}/${key}`, { body: `v${i}` });
                calls.push({ op: 'PUT', ...p });
                const g = await call(base, 'GET', `/v1/kv/${store}/${key}`);
                calls.push({ op: 'GET', ...g, expect: p.status === 204 ? `v${i}` : undefined });
                await sleep(pauseMs);
            }
        };
        const done = Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
        return {
            calls,
            async stop() {
                running = false;
                await done;
            },
        };
    }

    return { storeMetric, readyz, startLoad };
}

/* Asserts r is a 503 from a backend that is down or slow. */
export function assertBackend503(r, what) {
    assert.ok(!r.error, `${what}: ${r.error}`);
    assertJsonError(r, 503, what);
    assert.ok(r.headers['retry-after'], `${what}: Retry-After`);
}

/*
 * Asserts a load call was served: a PUT 204; a GET 200 with the value its
 * PUT wrote, or 404 when that PUT failed (its key may never have been
 * written).
 */
export function assertServed(c, when) {
    const what = `${when}: ${c.op} ${c.error ?? c.status} ${c.body ?? ''}`;
    assert.ok(!c.error, what);
    if (c.op === 'PUT') {
        assert.equal(c.status, 204, what);
    } else if (c.expect !== undefined) {
        assert.equal(c.status, 200, what);
        assert.equal(text(c), c.expect, what);
    } else {
        assert.ok(c.status === 200 || c.status === 404, what);
    }
}

/* Counts of calls by "op status" (or "op error"), as JSON, for messages. */
export function summary(calls) {
    const by = {};
    for (const c of calls) {
        const k = `${c.op} ${c.error ? 'error' : c.status}`;
        by[k] = (by[k] ?? 0) + 1;
    }
    return JSON.stringify(by);
}
