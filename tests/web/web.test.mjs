// Browser test of the web app: two real `peerchat run` nodes on loopback (the
// second joins through the first), one headless Chromium page on each node's
// web app; a message typed in alice's page appears in bob's page and turns
// `delivered` (then `read`) in alice's. Screenshots go to target/web-screenshots/.
//
//   PEERCHAT_BIN=target/debug/peerchat node tests/web/web.test.mjs
//
// Needs Debian's `chromium` (/usr/bin/chromium, or CHROMIUM=path) and
// `npm ci` in tests/web (playwright-core).

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(ROOT, process.env.PEERCHAT_BIN || 'target/debug/peerchat');
const BROWSER = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = path.join(ROOT, 'target', 'web-screenshots');
const STEP_TIMEOUT = 30_000;

const children = [];
let browser = null;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peerchat-web-'));

function log(...a) { console.log('web test:', ...a); }

function init(name) {
  const dir = path.join(tmp, name);
  execFileSync(BIN, ['--data-dir', dir, 'init', '--name', name], { stdio: 'pipe' });
  return dir;
}

// Starts `peerchat run --web`; resolves with its listen address and web URL.
function run(name, dir, bootstrap, extra = []) {
  const args = ['--data-dir', dir, 'run', '--listen', '127.0.0.1:0', '--web', ...extra];
  if (bootstrap) args.push('--bootstrap', bootstrap);
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  children.push(child);
  // The node's log (stderr) is kept for CI; it never holds the token.
  const logFile = fs.createWriteStream(path.join(OUT, name + '.log'), { flags: 'a' });
  child.stderr.pipe(logFile);
  return new Promise((resolve, reject) => {
    let out = '';
    let listen = null;
    let url = null;
    const timer = setTimeout(() => reject(new Error(name + ': no web app address within 30 s; stdout: ' + out)), STEP_TIMEOUT);
    child.stdout.on('data', (d) => {
      out += d.toString();
      listen = listen || (/^listening\s+(127\.0\.0\.1:\d+)/m.exec(out) || [])[1];
      url = url || (/^web app\s+(http:\/\/127\.0\.0\.1:\d+\/#token=[0-9a-f]{64})$/m.exec(out) || [])[1];
      if (listen && url) { clearTimeout(timer); resolve({ child, listen, url }); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(name + ' exited with ' + code + '; stdout: ' + out)); });
  });
}

async function status(url) {
  const u = new URL(url);
  const token = u.hash.replace('#token=', '');
  const r = await fetch(u.origin + '/api/status', { headers: { Authorization: 'Bearer ' + token } });
  if (!r.ok) throw new Error('status ' + r.status);
  return r.json();
}

async function until(what, f, ms = 60_000) {
  const end = Date.now() + ms;
  for (;;) {
    try { const v = await f(); if (v) return v; } catch (_) { /* not yet */ }
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function check(cond, msg) { if (!cond) throw new Error('check failed: ' + msg); }

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  check(fs.existsSync(BIN), 'no peerchat binary at ' + BIN + ' (cargo build -p peerchat, or set PEERCHAT_BIN)');
  const aliceDir = init('alice');
  const bobDir = init('bob');
  const alice = await run('alice', aliceDir, null);
  const bob = await run('bob', bobDir, alice.listen);
  log('alice at', alice.listen, 'bob joined through it');
  const [sa, sb] = await until('both names claimed', async () => {
    const a = await status(alice.url);
    const b = await status(bob.url);
    return a.name_claimed && b.name_claimed && [a, b];
  });

  browser = await chromium.launch({ executablePath: BROWSER, args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      // No calls home: this machine's network is closed.
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ], headless: true });
  const pa = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
  // Bob's page is phone-sized: the layout must still work.
  const pb = await (await browser.newContext({ viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true })).newPage();
  for (const [who, p] of [['alice', pa], ['bob', pb]]) {
    p.setDefaultTimeout(STEP_TIMEOUT);
    p.on('pageerror', (e) => { console.error(who + ' page error:', e); });
    p.on('console', (m) => { if (m.type() === 'error') console.error(who + ' console:', m.text()); });
  }
  await pa.goto(alice.url);
  await pb.goto(bob.url);

  // The token leaves the address bar at once, and the page is live.
  for (const p of [pa, pb]) {
    check(!p.url().includes('token'), 'the token is cleared from the URL: ' + p.url());
    await p.locator('#conn', { hasText: 'live' }).waitFor();
  }
  await pa.locator('#me', { hasText: 'alice' }).waitFor();

  // Bad input: an unknown user.
  await pa.fill('#new-name', 'nobody-here');
  await pa.press('#new-name', 'Enter');
  await pa.locator('#whois .error', { hasText: 'No user called' }).waitFor();

  // A new chat by username shows bob's key fingerprint.
  await pa.fill('#new-name', 'bob');
  await pa.press('#new-name', 'Enter');
  await pa.locator('#whois .fp', { hasText: sb.fingerprint }).waitFor();
  await pa.getByRole('button', { name: 'Start chat with bob' }).click();
  await pa.locator('#chat-title', { hasText: 'bob' }).waitFor();
  await pa.locator('#chat-fp', { hasText: sb.fingerprint }).waitFor();

  // Bad input: an empty and an over-long message; nothing typed is lost.
  await pa.fill('#text', '   ');
  await pa.press('#text', 'Enter');
  await pa.locator('#send-error', { hasText: 'Type a message first' }).waitFor();
  const long = 'x'.repeat(1000);
  await pa.fill('#text', long);
  await pa.press('#text', 'Enter');
  await pa.locator('#send-error', { hasText: 'the most is 960' }).waitFor();
  check((await pa.inputValue('#text')) === long, 'the over-long text stays in the box');

  // The message: typed and sent with Enter in alice's page...
  const text = 'Hi Bob! Alice here, writing from the web app.';
  await pa.fill('#text', text);
  await pa.press('#text', 'Enter');
  const mine = pa.locator('#messages li.msg.out', { hasText: text });
  await mine.waitFor();
  check((await pa.inputValue('#text')) === '', 'the box is cleared once sent');
  check((await pa.locator('#send-error').textContent()) === '', 'no error once sent');
  // ...turns delivered in alice's page (bob has not opened it yet)...
  await pa.locator('#messages li.msg.out[data-state="delivered"]', { hasText: text }).waitFor({ timeout: 60_000 });
  log('delivered');

  // ...and appears in bob's page as an unread conversation under alice's name:
  // she is not his contact, but her message names her, and bob's node checked
  // that name against the network's name record before pinning it to her key.
  const conv = pb.locator('#convs button.conv[data-peer="alice"]');
  await conv.locator('.badge', { hasText: '1' }).waitFor();
  check(!(await pb.locator('#convs button.conv[data-peer="' + sa.key.slice(0, 16) + '"]').count()),
    'no conversation under the start of her key');

  // Bob compares alice's fingerprint from the Contacts view; back in Chats,
  // the conversation opens fully.
  await pb.getByRole('button', { name: 'Contacts' }).click();
  await pb.fill('#add-name', 'alice');
  await pb.press('#add-name', 'Enter');
  await pb.locator('#add-result', { hasText: sa.fingerprint }).waitFor();
  await pb.locator('#contacts li', { hasText: 'alice' }).waitFor();
  check((await pa.locator('#messages li.msg.out', { hasText: text }).getAttribute('data-state')) === 'delivered',
    'still delivered, not read, while bob has not opened the conversation');
  await pb.getByRole('button', { name: 'Chats' }).click();
  await conv.locator('.badge', { hasText: '1' }).waitFor();
  await conv.click();
  await pb.locator('#messages li.msg.in', { hasText: text }).waitFor();
  // Bob read it: alice sees `read`.
  await pa.locator('#messages li.msg.out[data-state="read"]', { hasText: text }).waitFor({ timeout: 60_000 });
  log('read');

  // Bob answers; it appears live in alice's open conversation.
  const reply = 'hi alice, got it';
  await pb.fill('#text', reply);
  await pb.press('#text', 'Enter');
  await pa.locator('#messages li.msg.in', { hasText: reply }).waitFor();
  await pb.locator('#messages li.msg.out[data-state="delivered"], #messages li.msg.out[data-state="read"]', { hasText: reply }).waitFor({ timeout: 60_000 });

  // The conversation lists follow: the answer is the last message on both sides.
  await pa.locator('#convs .conv[data-peer="bob"] .last', { hasText: reply }).waitFor();
  await pb.locator('#convs .conv[data-peer="alice"] .last', { hasText: 'you: ' + reply }).waitFor();
  await pa.screenshot({ path: path.join(OUT, 'alice.png') });
  await pb.screenshot({ path: path.join(OUT, 'bob.png') });

  // Readable on a phone-sized window: nothing wider than the screen.
  const overflow = await pb.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, 'no horizontal scrolling on a phone-sized page (' + overflow + ' px too wide)');
  // Keyboard: Tab walks from the name field to its button, Shift+Tab back.
  await pa.focus('#new-name');
  await pa.keyboard.press('Tab');
  check(await pa.evaluate(() => document.activeElement.textContent === 'Look up'), 'Tab reaches "Look up"');
  await pa.keyboard.press('Shift+Tab');
  check(await pa.evaluate(() => document.activeElement.id === 'new-name'), 'Shift+Tab goes back');

  // The contacts list shows bob's fingerprint.
  await pa.getByRole('button', { name: 'Contacts' }).click();
  await pa.locator('#contacts li', { hasText: sb.fingerprint }).waitFor();

  // The network picture: bob is a dot in one of alice's buckets.
  await pa.getByRole('button', { name: 'Network' }).click();
  await until('a peer drawn', async () => (await pa.locator('#netsvg circle.peer').count()) >= 1, STEP_TIMEOUT);
  await pa.locator('#lookups li').first().waitFor();
  check((await pa.locator('#net-summary').textContent()).includes(sa.node_id), 'the summary names our node id');
  await pa.screenshot({ path: path.join(OUT, 'alice-network.png') });

  // A wrong token: a clear message, not a broken page.
  const pc = await browser.newPage();
  await pc.goto(new URL(alice.url).origin + '/#token=' + '0'.repeat(64));
  await pc.locator('#banner', { hasText: 'token was refused' }).waitFor();
  check(await pc.locator('#login').isVisible(), 'the token form is shown');
  await pc.close();

  // A dropped event stream: bob's node stops; his page says so and keeps
  // what he was typing.
  await pb.fill('#text', 'typed while the node is down');
  bob.child.kill('SIGTERM');
  await pb.locator('#conn', { hasText: 'reconnecting' }).waitFor();
  await pb.locator('#banner', { hasText: 'Reconnecting' }).waitFor();
  check((await pb.inputValue('#text')) === 'typed while the node is down', 'typed text kept');
  await pb.press('#text', 'Enter');
  await pb.locator('#send-error', { hasText: 'Not sent' }).waitFor();
  check((await pb.inputValue('#text')) === 'typed while the node is down', 'text kept after a failed send');
  await pb.screenshot({ path: path.join(OUT, 'bob-dropped.png') });

  // Bob's node comes back on the same API port, with a new token: the page's
  // reconnection is refused, it asks for the token, and with the new one it is
  // live again and sends what was typed.
  if (bob.child.exitCode === null) await new Promise((r) => bob.child.once('exit', r));
  const port = new URL(bob.url).port;
  const bob2 = await run('bob', bobDir, alice.listen, ['--api', '127.0.0.1:' + port]);
  check(new URL(bob2.url).port === port, 'same API port');
  await pb.locator('#banner', { hasText: 'token was refused' }).waitFor({ timeout: 60_000 });
  await pb.fill('#login-token', new URL(bob2.url).hash.replace('#token=', ''));
  await pb.press('#login-token', 'Enter');
  await pb.locator('#conn', { hasText: 'live' }).waitFor();
  check(!(await pb.locator('#banner').isVisible()), 'no banner once live again');
  check((await pb.inputValue('#text')) === 'typed while the node is down', 'text kept across the restart');
  await pb.press('#text', 'Enter');
  await pa.getByRole('button', { name: 'Chats' }).click();
  await pa.locator('#messages li.msg.in', { hasText: 'typed while the node is down' }).waitFor({ timeout: 60_000 });
  log('reconnected with the new token; the kept text was sent');
  // Nothing of either token in the nodes' logs.
  for (const [name, node] of [['alice', alice], ['bob', bob], ['bob', bob2]]) {
    const token = new URL(node.url).hash.replace('#token=', '');
    const text = fs.readFileSync(path.join(OUT, name + '.log'), 'utf8');
    check(!text.includes(token) && !text.includes(token.slice(0, 16)), name + "'s log holds no token");
  }
  log('all checks passed; screenshots in', OUT);
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
}

const overall = setTimeout(() => { console.error('web test: over 5 minutes, giving up'); cleanup().finally(() => process.exit(1)); }, 300_000);
try {
  await main();
  await cleanup();
  clearTimeout(overall);
  process.exit(0);
} catch (e) {
  console.error('web test FAILED:', e && e.stack ? e.stack : e);
  if (browser) {
    for (const ctx of browser.contexts()) {
      for (const [i, p] of ctx.pages().entries()) {
        await p.screenshot({ path: path.join(OUT, 'failure-' + browser.contexts().indexOf(ctx) + '-' + i + '.png') }).catch(() => {});
      }
    }
  }
  await cleanup();
  clearTimeout(overall);
  process.exit(1);
}
