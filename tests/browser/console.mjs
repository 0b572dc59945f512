// Drives the rpchub browser console (GET /ws/rpc/test) in headless Chromium, as a person would:
// the page connects and subscribes (?channel=...), then this script clicks "ping" and waits for
// the snapshot, a live publication and the pong in the page's log. Prints one JSON line with what
// it saw; exits non-zero if something did not show up within the wait.
//
// usage: node console.mjs http://127.0.0.1:PORT CHANNEL
import { chromium } from 'playwright-core';

const [base, channel] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const seen = { snapshot: false, publication: false, pong: false, state: '', frames: [] };
try {
  const page = await browser.newPage();
  page.on('websocket', (ws) => ws.on('framereceived', (f) => seen.frames.push(String(f.payload))));
  await page.goto(`${base}/ws/rpc/test?channel=${encodeURIComponent(channel)}`);
  await page.waitForSelector('body[data-snapshot="1"]', { timeout: 10000 });
  seen.snapshot = true;
  await page.waitForSelector('#log div[data-event="publication"]', { timeout: 10000 });
  seen.publication = true;
  await page.click('#ping');
  await page.waitForFunction(() => document.getElementById('log').textContent.includes('"result":"pong"'), null, { timeout: 10000 });
  seen.pong = true;
  seen.state = await page.textContent('#state');
} catch (e) {
  seen.error = String(e);
} finally {
  await browser.close();
}
seen.frames = seen.frames.slice(0, 5);
console.log(JSON.stringify(seen));
process.exit(seen.error ? 1 : 0);
