// The dashboard at `/`, driven in Debian's headless Chromium through
// playwright-core: the live feed (subscribe in the page, publish over HTTP,
// text and binary payloads), the publish form (a message reaches a separate
// WebSocket client; a server error frame is shown), the key browser (value,
// ETag, TTL), the topics and stores tables, and a narrow window. Also the
// /v1/stats route the page polls. Screenshots go to tests/artifacts/.
//
// With API tokens (a private kvbusd started with a tokens file): the page
// asks for a token, refuses a wrong one, shows data and a live feed with a
// good one, and says clearly what a token without admin may not see.
//
// Backend-agnostic: it runs against the kvbusd of tests/e2e/run for every
// backend. Chromium missing or failing to start is a failure, not a skip
// (tests/tools/install-deps installs the `chromium` package).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

import { BASE, BACKEND, TLS, request, json, uniqueStore } from './lib.mjs';
import { WsClient, startKvbusd, httpRequest } from './wslib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const KVBUSD = process.env.KVBUSD ?? path.resolve(HERE, '../../build/kvbusd');
const ARTIFACTS = path.resolve(HERE, '../artifacts');
const CHROMIUM = process.env.KVBUS_CHROMIUM ?? '/usr/bin/chromium';
const UI_TIMEOUT_MS = 5000; // every wait on the page; bounds a failure only
const SUITE_TIMEOUT_MS = 30000;

const LAUNCH_ARGS = ['--headless', '--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'];

const suffix = `${process.pid}-${Date.now().toString(36)}`;

// The whole suite is bounded, so a hung browser fails the run.
describe(`dashboard (${BACKEND})`, { timeout: SUITE_TIMEOUT_MS }, () => {
    let browser, page;
    const pageErrors = [];

    before(async () => {
        assert.ok(fs.existsSync(CHROMIUM),
            `${CHROMIUM} is missing: run tests/tools/install-deps (Debian package chromium)`);
        browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
        // Over TLS (KVBUS_TEST_TLS=1) the certificate is a test-made
        // self-signed one.
        page = await browser.newPage({ viewport: { width: 1280, height: 800 },
            ignoreHTTPSErrors: TLS });
        page.setDefaultTimeout(UI_TIMEOUT_MS);
        page.on('pageerror', (e) => pageErrors.push(String(e)));
        fs.mkdirSync(ARTIFACTS, { recursive: true });
        await page.goto(BASE + '/');
        await page.locator('#ws-state', { hasText: 'connected' }).waitFor();
    });

    after(async () => {
        await browser?.close();
    });

    test('GET /v1/stats names the node, the provider and every store', async () => {
        const res = await request('GET', '/v1/stats');
        assert.equal(res.status, 200);
        const doc = json(res);
        assert.equal(typeof doc.node, 'string');
        assert.ok(Number.isInteger(doc.uptime_s) && doc.uptime_s >= 0);
        assert.equal(typeof doc.provider.name, 'string');
        assert.equal(doc.provider.healthy, true);
        assert.equal(doc.provider.lag, 0, 'no consumer lag without Kafka');
        const def = doc.stores.find((s) => s.name === 'default');
        assert.ok(def, 'store default is listed');
        assert.equal(def.backend, BACKEND);
        assert.equal(def.healthy, true);
        assert.ok(Number.isInteger(def.ops_total));
    });

    test('the page and its files are served from the binary', async () => {
        for (const [p, type] of [['/', 'text/html'],
            ['/dashboard/dashboard.js', 'text/javascript'],
            ['/dashboard/dashboard.css', 'text/css']]) {
            const res = await request('GET', p);
            assert.equal(res.status, 200, p);
            assert.ok(res.headers['content-type'].startsWith(type), p);
        }
        assert.equal((await request('GET', '/dashboard/nope.js')).status, 404);
    });

    test('a message published over HTTP appears in the feed, text and hex', async () => {
        const topic = `dash.feed.${suffix}`;
        await page.getByLabel('Topic or pattern').fill(`dash.feed.${suffix}*`);
        await page.getByRole('button', { name: 'Subscribe' }).click();
        await page.locator('#subs li', { hasText: `dash.feed.${suffix}*` }).waitFor();

        const res = await request('POST', `/v1/pub/${topic}`, { body: 'hello from http' });
        assert.equal(res.status, 202);
        const row = page.locator('#feed tr', { hasText: 'hello from http' });
        await row.waitFor();
        const cells = await row.locator('td').allTextContents();
        assert.equal(cells[1], topic);
        assert.equal(cells[3], String(json(res).seq));

        const bin = await request('POST', `/v1/pub/${topic}.bin`,
            { body: Buffer.from([0xff, 0xfe, 0x00, 0x41]) });
        assert.equal(bin.status, 202);
        await page.locator('#feed tr', { hasText: 'ff fe 00 41' }).waitFor();
        // newest first
        assert.match(await page.locator('#feed tr').first().textContent(), /ff fe 00 41/);
    });

    test('the publish form reaches another WebSocket client and shows errors', async () => {
        const topic = `dash.pub.${suffix}`;
        const other = await WsClient.open();
        try {
            assert.equal((await other.subscribe([topic])).type, 'subscribed');
            await page.getByLabel('Topic', { exact: true }).fill(topic);
            await page.getByLabel('Payload').fill('sent from the form');
            await page.getByRole('button', { name: 'Publish' }).click();
            const m = await other.takeMessage(topic);
            assert.equal(m.data, 'sent from the form');
            await page.locator('#pub-result', { hasText: 'published' }).waitFor();

            await page.getByLabel('Topic', { exact: true }).fill('bad topic');
            await page.getByRole('button', { name: 'Publish' }).click();
            await page.locator('#pub-result', { hasText: 'bad_topic' }).waitFor();
        } finally {
            await other.close();
        }
    });

    test('the key browser shows a value with its ETag and TTL', async () => {
        const store = uniqueStore('dash');
        const key = 'user/42';
        const put = await request('PUT', `/v1/kv/${store}/user%2F42?ttl=300`,
            { body: 'Ada Lovelace' });
        assert.equal(put.status, 204);
        await request('PUT', `/v1/kv/${store}/other`, { body: 'x' });

        // the store list is refreshed by the page's poll
        await page.locator(`#kv-store option[value="${store}"]`).waitFor({ state: 'attached' });
        await page.getByLabel('Store', { exact: true }).selectOption(store);
        await page.getByLabel('Prefix').fill('user/');
        await page.getByRole('button', { name: 'List keys' }).click();
        await page.locator('#kv-keys button', { hasText: key }).click();
        await page.locator('#kv-data', { hasText: 'Ada Lovelace' }).waitFor();
        assert.equal(await page.locator('#kv-etag').textContent(), put.headers.etag);
        assert.match(await page.locator('#kv-ttl').textContent(), /^\d+ s$/);
        assert.equal(await page.locator('#kv-keys button', { hasText: 'other' }).count(), 0);
    });

    test('the stores and topics tables show live data; screenshots', async () => {
        const topic = `dash.feed.${suffix}`;
        await page.locator('#stores tr', { hasText: 'default' }).waitFor();
        const def = await page.locator('#stores tr', { hasText: 'default' })
            .locator('td').allTextContents();
        assert.equal(def[1], BACKEND);
        assert.equal(def[2], 'up');
        const trow = page.locator('#topics tr', { hasText: topic }).first();
        await trow.waitFor();
        assert.ok(Number((await trow.locator('td').nth(2).textContent()).replace(/,/g, '')) >= 1);
        assert.notEqual(await page.locator('#node').textContent(), '…');
        assert.match(await page.locator('#provider').textContent(), /, up$/);

        await page.evaluate(() => window.scrollTo(0, 0));
        await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${BACKEND}-1280x800.png`) });
        await page.setViewportSize({ width: 420, height: 800 });
        const overflow = await page.evaluate(
            () => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `the page is ${overflow}px wider than a 420px window`);
        await page.evaluate(() => window.scrollTo(0, 0));
        await page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${BACKEND}-420x800.png`) });
        await page.setViewportSize({ width: 1280, height: 800 });
    });

    test('pause holds new rows, clear empties the feed; keyboard reaches the controls', async () => {
        const topic = `dash.feed.${suffix}.pause`;
        await page.getByRole('button', { name: 'Pause' }).click();
        await request('POST', `/v1/pub/${topic}`, { body: 'while paused' });
        await page.locator('#feed-count', { hasText: '1 waiting' }).waitFor();
        assert.equal(await page.locator('#feed tr', { hasText: 'while paused' }).count(), 0);
        await page.getByRole('button', { name: 'Resume' }).click();
        await page.locator('#feed tr', { hasText: 'while paused' }).waitFor();
        await page.getByRole('button', { name: 'Clear' }).click();
        assert.equal(await page.locator('#feed tr').count(), 0);

        await page.getByLabel('Topic or pattern').focus();
        await page.keyboard.press('Tab');
        assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Subscribe');
        assert.deepEqual(pageErrors, []);
    });
});

describe('dashboard with API tokens', { timeout: SUITE_TIMEOUT_MS }, () => {
    const admin = `dash-admin-${crypto.randomBytes(12).toString('hex')}`;
    const reader = `dash-reader-${crypto.randomBytes(12).toString('hex')}`;
    let browser, dir, node;
    const pageErrors = [];

    /* A fresh page (its own sessionStorage) on the private node. */
    async function openPage() {
        const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        const page = await context.newPage();
        page.setDefaultTimeout(UI_TIMEOUT_MS);
        page.on('pageerror', (e) => pageErrors.push(String(e)));
        await page.goto(node.url + '/');
        return page;
    }

    before(async () => {
        assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing`);
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvbus-dash-auth-'));
        const file = path.join(dir, 'tokens');
        fs.writeFileSync(file, [
            `admin ${admin} admin kv:read:* kv:write:* topic:sub:* topic:pub:*`,
            `reader ${reader} kv:read:*`, ''].join('\n'), { mode: 0o600 });
        node = await startKvbusd(KVBUSD, [`--server.tokens_file=${file}`]);
        browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
    });

    after(async () => {
        await browser?.close();
        if (node) assert.equal((await node.stop()).code, 0, node.stderr().slice(-2000));
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('the page asks for a token, refuses a wrong one, then shows data and the live feed', async () => {
        const page = await openPage();
        const input = page.getByLabel('API token', { exact: true });
        await input.waitFor();
        assert.equal(await page.evaluate(() => document.activeElement.id), 'auth-token',
            'the token field has the focus');
        await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-token-prompt.png') });

        await input.fill('not-a-valid-token-at-all');
        await input.press('Enter');
        await page.locator('#auth-error', { hasText: 'refused' }).waitFor();
        assert.equal(await page.locator('#auth').isVisible(), true);

        await input.fill(admin);
        await page.getByRole('button', { name: 'Use token' }).click();
        await page.locator('#auth').waitFor({ state: 'hidden' });
        await page.locator('#stores tr', { hasText: 'default' }).waitFor();
        assert.notEqual(await page.locator('#node').textContent(), '…');
        await page.locator('#ws-state', { hasText: 'connected' }).waitFor();

        const topic = `dash.auth.${process.pid}`;
        await page.getByLabel('Topic or pattern').fill(topic);
        await page.getByRole('button', { name: 'Subscribe' }).click();
        await page.locator('#subs li', { hasText: topic }).waitFor();
        const res = await httpRequest(node.url, 'POST', `/v1/pub/${topic}`,
            { body: 'behind a token', headers: { authorization: `Bearer ${admin}` } });
        assert.equal(res.status, 202);
        await page.locator('#feed tr', { hasText: 'behind a token' }).waitFor();
        assert.equal(await page.evaluate(() => sessionStorage.getItem('kvbus.token')), admin);
        await page.context().close();
    });

    test('a token without admin is told what it may not see; writes and feeds say forbidden', async () => {
        const page = await openPage();
        await page.getByLabel('API token', { exact: true }).fill(reader);
        await page.getByRole('button', { name: 'Use token' }).click();
        await page.locator('#auth').waitFor({ state: 'hidden' });
        await page.locator('#auth-notice', { hasText: 'admin' }).waitFor();
        await page.locator('#ws-state', { hasText: 'connected' }).waitFor();
        await page.getByLabel('Topic or pattern').fill('news');
        await page.getByRole('button', { name: 'Subscribe' }).click();
        await page.locator('#feed-notice', { hasText: 'forbidden' }).waitFor();
        await page.getByLabel('Topic', { exact: true }).fill('news');
        await page.getByRole('button', { name: 'Publish' }).click();
        await page.locator('#pub-result', { hasText: 'forbidden' }).waitFor();
        await page.context().close();
        assert.deepEqual(pageErrors, []);
    });
});
