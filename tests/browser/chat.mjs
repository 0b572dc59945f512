// Two people in a conversation, in the rpchub console (GET /ws/rpc/test) in headless Chromium,
// against the chat example (examples/chat-backend: its rpchub.toml and its backend) run by
// tests/it/chat_example.rs. Alice has two tabs (one browser context), bob one (another):
// 1. alice's first tab opens the conversation: she is here, alone;
// 2. bob opens it: both tabs list alice and bob, alice's tab shows bob's join;
// 3. bob types: alice's tab says "bob is typing…" (bob's own does not); he sends three
//    messages: alice's tab shows them as "bob: ...", 3 unread, and the typing line clears;
// 4. alice's second tab opens: 3 unread from the read cursor the server keeps, "alice (2 tabs)";
// 5. "mark read" in the first tab: 0 unread there, and in the second tab too (the `cursor`
//    notification); bob writes again, mentioning @alice (1 unread in both, and the mention in
//    both tabs' panel of notifications:#alice, the user channel the server subscribed each tab
//    to), the second tab answers @bob (sending marks read: 0 in both, 1 for bob, and the mention
//    on bob's notifications:#bob); alice's try at bob's user channel is refused;
// 6. bob closes his tab: alice's tabs show him leave; the second tab, reloaded, still has 0
//    unread (the cursor outlives the page) and alice is here with her two tabs.
// A screenshot of each tab is saved under ARTIFACTS. The last stdout line is one JSON object
// with what was seen; the exit status is non-zero if something did not show up within the wait.
//
// usage: node chat.mjs http://127.0.0.1:PORT CHANNEL ARTIFACTS_DIR ALICE_TOKEN BOB_TOKEN
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [base, channel, artifacts, aliceToken, bobToken] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const seen = { steps: [], screenshots: [], pageErrors: [], sent: {} };
const T = { timeout: 15000 };
const panel = `.panel[data-channel="${channel}"]`;
const inbox = (user) => `.panel[data-channel="notifications:#${user}"]`;
const url = (token) => `${base}/ws/rpc/test?token=${token}&channel=${encodeURIComponent(channel)}&typing=typing`;
const pages = {};

async function open(context, name, token) {
  const page = await context.newPage({ viewport: { width: 1400, height: 800 } });
  page.on('pageerror', (e) => seen.pageErrors.push(name + ': ' + String(e)));
  seen.sent[name] = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => seen.sent[name].push(String(f.payload))));
  await page.goto(url(token));
  await page.waitForSelector(`${panel}[data-status="live"][data-people]`, T);
  pages[name] = page;
  return page;
}
const attr = (page, key) => page.$eval(panel, (e, k) => e.dataset[k] ?? null, key);
const liveTexts = (page) => page.$$eval(`${panel} tr[data-kind="live"] summary`, (ss) => ss.map((s) => s.textContent).reverse());
async function say(page, text) {
  await page.fill(`${panel} .say`, text);
  await page.press(`${panel} .say`, 'Enter');
  // The box empties once the server has the message.
  await page.waitForFunction((p) => document.querySelector(`${p} .say`).value === '', panel, T);
}
async function shot(page, name) {
  const path = `${artifacts}/${name}.png`;
  await page.screenshot({ path });
  seen.screenshots.push(path);
}

try {
  const aliceBrowser = await browser.newContext();
  const bobBrowser = await browser.newContext();

  // 1. alice alone
  const a1 = await open(aliceBrowser, 'a1', aliceToken);
  await a1.waitForSelector('body[data-me="alice"]', T);
  seen.alone = { people: await attr(a1, 'people'), unread: await attr(a1, 'unread'), me: await a1.textContent('#me') };
  seen.steps.push('alone');

  // 2. bob comes in
  const b = await open(bobBrowser, 'b', bobToken);
  await a1.waitForSelector(`${panel}[data-people="alice,bob"]`, T);
  await b.waitForSelector(`${panel}[data-people="alice,bob"]`, T);
  await a1.waitForSelector(`${panel} tr[data-kind="join"]`, T);
  seen.joinRow = await a1.$$eval(`${panel} tr[data-kind="join"] summary`, (ss) => ss.map((s) => s.textContent));
  seen.steps.push('joined');

  // 3. bob types, then writes three messages
  await b.type(`${panel} .say`, 'hello al', { delay: 40 });
  await a1.waitForSelector(`${panel}[data-typing="bob"]`, T);
  seen.typing = await a1.textContent(`${panel} .typing`);
  seen.bobSeesHimselfTyping = await attr(b, 'typing');
  await shot(a1, 'chat-alice-typing');
  await b.type(`${panel} .say`, 'ice', { delay: 40 });
  await b.press(`${panel} .say`, 'Enter');
  await a1.waitForSelector(`${panel}[data-unread="1"]`, T);
  seen.typingAfterMessage = await attr(a1, 'typing');
  await say(b, 'are you there?');
  await say(b, 'the meeting moved to 3pm');
  await a1.waitForSelector(`${panel}[data-unread="3"]`, T);
  seen.aliceReads = await liveTexts(a1);
  seen.bobUnread = await attr(b, 'unread');
  seen.steps.push('messages');

  // 4. alice's second tab
  const a2 = await open(aliceBrowser, 'a2', aliceToken);
  await a2.waitForSelector(`${panel}[data-unread="3"][data-clients="3"]`, T);
  seen.secondTab = {
    people: await a2.textContent(`${panel} .people`), badge: await a2.textContent(`#chanlist li[data-channel="${channel}"] .u`),
    snapshot: await a2.$$eval(`${panel} tr[data-kind="snap"] summary`, (ss) => ss.map((s) => s.textContent).reverse()),
  };
  await shot(a2, 'chat-alice-second-tab');
  seen.steps.push('second tab');

  // 5. read in one tab, read in both
  await a1.click(`${panel} .markread`);
  await a1.waitForSelector(`${panel}[data-unread="0"]`, T);
  await a2.waitForSelector(`${panel}[data-unread="0"]`, T);
  seen.afterMarkRead = {
    a2Badge: await a2.textContent(`#chanlist li[data-channel="${channel}"] .u`), a2Cursors: await a2.$eval('body', (e) => e.dataset.cursors),
    a1Cursor: await attr(a1, 'cursor'), a2Cursor: await attr(a2, 'cursor'),
  };
  await say(b, '@alice are we still on?');
  await a1.waitForSelector(`${panel}[data-unread="1"]`, T);
  await a2.waitForSelector(`${panel}[data-unread="1"]`, T);
  const mentioned = (page, user) => page.waitForSelector(`${inbox(user)} tr[data-kind="live"]`, T)
    .then(() => page.$$eval(`${inbox(user)} tr[data-kind="live"] summary`, (ss) => ss.map((s) => s.textContent)));
  seen.aliceMentioned = [await mentioned(a1, 'alice'), await mentioned(a2, 'alice')];
  await say(a2, '@bob yes, see you at 3');
  await a1.waitForSelector(`${panel}[data-unread="0"]`, T);
  await a2.waitForSelector(`${panel}[data-unread="0"]`, T);
  await b.waitForSelector(`${panel}[data-unread="1"]`, T);
  seen.bobReads = await liveTexts(b);
  seen.bobMentioned = await mentioned(b, 'bob');
  seen.bobInbox = await b.$$eval(inbox('bob'), (ps) => ps.map((p) => ({ status: p.dataset.status, snapshots: p.dataset.snapshots, unread: p.dataset.unread })));
  // Alice subscribes to bob's user channel by hand: refused, and nothing of bob's shows.
  await a1.fill('#channel', 'notifications:#bob');
  await a1.click('#subscribe');
  await a1.waitForSelector(`${inbox('bob')}[data-status="error"]`, T);
  seen.aliceAtBobs = {
    status: await a1.textContent(`${inbox('bob')} .status`),
    rows: await a1.$$eval(`${inbox('bob')} tr[data-kind="live"], ${inbox('bob')} tr[data-kind="snap"]`, (rs) => rs.length),
  };
  await shot(b, 'chat-bob');
  await shot(a1, 'chat-alice');
  seen.steps.push('read');

  // 6. bob goes; alice's second tab is reloaded
  await b.close();
  await a1.waitForSelector(`${panel}[data-people="alice"]`, T);
  await a1.waitForSelector(`${panel} tr[data-kind="leave"]`, T);
  seen.leaveRow = await a1.$$eval(`${panel} tr[data-kind="leave"] summary`, (ss) => ss.map((s) => s.textContent));
  await a2.reload();
  // The tab before the reload may still be listed a moment, until its leave comes.
  await a2.waitForSelector(`${panel}[data-status="live"][data-unread][data-people="alice"][data-clients="2"]`, T);
  seen.reloaded = { unread: await attr(a2, 'unread'), cursor: await attr(a2, 'cursor'), offset: await attr(a2, 'offset'), people: await a2.textContent(`${panel} .people`) };
  seen.steps.push('left');
} catch (e) {
  seen.error = String(e);
  for (const [name, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    seen[`log_${name}`] = (await page.textContent('#log').catch(() => '')).slice(-3000);
    await shot(page, `chat-failed-${name}`).catch(() => {});
  }
} finally {
  await browser.close();
}
for (const name of Object.keys(seen.sent)) seen.sent[name] = seen.sent[name].slice(0, 40);
process.stdout.write(JSON.stringify(seen) + '\n', () => process.exit(seen.error ? 1 : 0));
