// Drives the rpchub browser console (GET /ws/rpc/test) in headless Chromium, as a person would,
// against `rpchub serve --demo` run by tests/it/browser.rs:
// 1. the page connects and subscribes (?channel=...); the panel shows the snapshot's rows, then
//    live rows, the {epoch, offset} and a rate;
// 2. on the Methods tab (from rpc.discover) the forms of `history` and `ping` are filled in and
//    called, and their answers shown;
// 3. Disconnect and Connect: the page resubscribes with `since` and the snapshot recovers what
//    was published meanwhile (recovered:true, no gap, every offset once in the table);
// 4. the server is killed: this script prints `kill` and waits for `killed` on stdin, sees the
//    page say it is reconnecting, prints `start` and waits for `started`; the page must then
//    reconnect, resubscribe with `since` = the last position it saw, show the gap banner (the
//    memory broker's epoch changed, so the snapshot says recovered:false) and show new live rows.
// Last, a publication whose offset jumps is fed to the page, which must add it to the banner.
// A screenshot of each view is saved under ARTIFACTS. The last stdout line is one JSON object
// with what was seen; the exit status is non-zero if something did not show up within the wait.
//
// usage: node console.mjs http://127.0.0.1:PORT CHANNEL ARTIFACTS_DIR
// With CONSOLE_HTML=src/console.html the page comes from that file instead of the server (to try
// a change to the page against a server built before it).
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync, readFileSync } from 'node:fs';

const [base, channel, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what, answer) {
  console.log(what);
  const { value } = await stdin.next();
  if (value !== answer) throw new Error(`asked ${what}, got ${value}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    // A page fulfilled by the script (CONSOLE_HTML) has no address of its own, and Chromium's
    // local network access checks would keep it from the server on 127.0.0.1.
    ...(process.env.CONSOLE_HTML ? ['--disable-features=LocalNetworkAccessChecks'] : [])],
});
const seen = { steps: [], sent: [], received: [], screenshots: [], pageErrors: [] };
const T = { timeout: 15000 };
const panel = `.panel[data-channel="${channel}"]`;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => seen.sent.push(String(f.payload)));
    ws.on('framereceived', (f) => {
      const text = String(f.payload);
      if (seen.received.length < 5 && text.includes('"method":"subscription"')) seen.received.push(text);
    });
  });
  if (process.env.CONSOLE_HTML) {
    const body = readFileSync(process.env.CONSOLE_HTML, 'utf8');
    await page.route(`${base}/ws/rpc/test*`, (r) => r.fulfill({ contentType: 'text/html; charset=utf-8', body }));
  }
  await page.goto(`${base}/ws/rpc/test?channel=${encodeURIComponent(channel)}`);

  // 1. snapshot and live rows
  await page.waitForSelector(`${panel}[data-snapshots="1"] tr[data-kind="snap"]`, T);
  await page.waitForFunction((p) => document.querySelectorAll(`${p} tr[data-kind="live"]`).length >= 3, panel, T);
  await page.waitForFunction((p) => Number(document.querySelector(p).dataset.rate) > 0, panel, T);
  seen.first = await page.$eval(panel, (e) => ({
    epoch: e.dataset.epoch, offset: Number(e.dataset.offset), rate: e.querySelector('.rate').textContent,
    snapRows: e.querySelectorAll('tr[data-kind="snap"]').length, spark: e.querySelector('.spark polyline').getAttribute('points'),
    gap: e.dataset.gap || null, status: e.dataset.status,
  }));
  // The newest row is on top; a row's data opens to its pretty-printed JSON.
  const offsets = await page.$$eval(`${panel} tr[data-kind="live"]`, (rs) => rs.map((r) => Number(r.dataset.offset)));
  seen.newestFirst = offsets.every((o, i) => i === 0 || offsets[i - 1] > o);
  await page.click(`${panel} tr[data-kind="live"] summary`);
  seen.pretty = await page.textContent(`${panel} tr[data-kind="live"] details[open] pre`);
  seen.steps.push('live');
  await page.screenshot({ path: `${artifacts}/console-live.png` });
  seen.screenshots.push(`${artifacts}/console-live.png`);

  // 2. method forms from rpc.discover
  await page.click('#tab-methods');
  await page.click('#methodlist button[data-method="history"]');
  seen.historyForm = await page.$$eval('#methodform [name]', (es) => es.map((e) => [e.name, e.tagName.toLowerCase(), e.type]));
  await page.fill('#param-channel', channel);
  await page.fill('#param-limit', '2');
  await page.click('#callmethod');
  await page.waitForSelector('#answer[data-done="1"]', T);
  seen.historyAnswer = JSON.parse(await page.textContent('#answer'));
  await page.click('#methodlist button[data-method="ping"]');
  await page.click('#callmethod');
  await page.waitForSelector('#answer[data-done="1"]', T);
  seen.pingAnswer = JSON.parse(await page.textContent('#answer'));
  seen.steps.push('methods');
  await page.screenshot({ path: `${artifacts}/console-methods.png` });
  seen.screenshots.push(`${artifacts}/console-methods.png`);
  await page.click('#tab-channels');

  // 3. a disconnect and a connect by hand: the page resubscribes with since in the same epoch,
  // the snapshot recovers what was published meanwhile, and the table has every offset once.
  await page.click('#disconnect');
  await page.waitForSelector('body[data-state="closed"]', T);
  const pause = await page.$eval(panel, (e) => Number(e.dataset.offset));
  await page.waitForTimeout(1500);
  await page.click('#connect');
  await page.waitForSelector(`${panel}[data-snapshots="2"]`, T);
  await page.waitForFunction(([p, n]) => Number(document.querySelector(p).dataset.offset) > n, [panel, pause], T);
  seen.resumed = await page.$eval(panel, (e) => {
    const offsets = [...e.querySelectorAll('tr[data-kind="snap"], tr[data-kind="live"]')].map((r) => Number(r.dataset.offset));
    const sorted = [...offsets].sort((a, b) => a - b);
    return {
      recovered: e.dataset.recovered, gap: e.dataset.gap || null, epoch: e.dataset.epoch,
      everyOffsetOnce: sorted.every((o, i) => i === 0 || o === sorted[i - 1] + 1), rows: offsets.length,
    };
  });
  seen.resumedFrom = pause;
  seen.steps.push('resumed');

  // 4. the server goes away and comes back
  await ask('kill', 'killed');
  await page.waitForSelector('body[data-state="reconnecting"]', T);
  seen.reconnecting = await page.textContent('#state');
  seen.beforeRestart = await page.$eval(panel, (e) => ({ epoch: e.dataset.epoch, offset: Number(e.dataset.offset), status: e.dataset.status }));
  const liveBefore = await page.$$eval(`${panel} tr[data-kind="live"]`, (rs) => rs.length);
  const sentBefore = seen.sent.length;
  await ask('start', 'started');
  await page.waitForSelector('body[data-connects="3"][data-state="open"]', { timeout: 30000 });
  await page.waitForSelector(`${panel}[data-snapshots="3"][data-epoch-changed="1"]`, T);
  await page.waitForFunction(([p, n]) => document.querySelectorAll(`${p} tr[data-kind="live"]`).length > n, [panel, liveBefore], T);
  seen.resubscribe = seen.sent.slice(sentBefore).map((f) => JSON.parse(f)).find((m) => m.method === 'subscribe') || null;
  seen.after = await page.$eval(panel, (e) => ({
    epoch: e.dataset.epoch, offset: Number(e.dataset.offset), status: e.dataset.status, recovered: e.dataset.recovered,
    gap: e.dataset.gap || null, banner: e.querySelector('.gapwarn').hidden ? null : e.querySelector('.gapwarn').innerText,
  }));
  seen.bannerVisible = await page.isVisible(`${panel} .gapwarn`);
  seen.channelListWarns = await page.$eval(`#chanlist li[data-channel="${channel}"]`, (e) => e.classList.contains('gap'));
  seen.state = await page.textContent('#state');
  seen.steps.push('recovered');
  await page.screenshot({ path: `${artifacts}/console.png` });
  seen.screenshots.push(`${artifacts}/console.png`);

  // The raw log shows the frames, the renewed subscribe with its since among them.
  await page.click('#tab-raw');
  seen.rawSince = await page.$$eval('#log div[data-dir="out"]', (ds) => ds.some((d) => d.textContent.includes('"since"')));
  await page.screenshot({ path: `${artifacts}/console-raw.png` });
  seen.screenshots.push(`${artifacts}/console-raw.png`);

  // An offset that jumps (fed to the page as if the server had sent it) is a gap too.
  seen.jump = await page.evaluate((p) => {
    const e = document.querySelector(p);
    const sub = e.querySelector('.sub').textContent.replace('sub ', '');
    const offset = Number(e.dataset.offset) + 4;
    onFrame(JSON.stringify({ jsonrpc: '2.0', method: 'subscription', params: { subscription: sub,
      result: { type: 'publication', channel: e.dataset.channel, offset, ts: Date.now(), data: { made: 'up' } } } }));
    return { gap: e.dataset.gap, banner: e.querySelector('.gapwarn li').textContent };
  }, panel);
} catch (e) {
  seen.error = String(e);
  // What the page showed when it went wrong.
  const page = browser.contexts()[0]?.pages()[0];
  if (page) {
    seen.log = (await page.textContent('#log').catch(() => '')).slice(-3000);
    await page.screenshot({ path: `${artifacts}/console-failed.png` }).catch(() => {});
    seen.screenshots.push(`${artifacts}/console-failed.png`);
  }
} finally {
  await browser.close();
}
seen.sent = seen.sent.slice(0, 10);
// Written in full before exiting: process.exit right after console.log may cut a pipe's output.
process.stdout.write(JSON.stringify(seen) + '\n', () => process.exit(seen.error ? 1 : 0));
