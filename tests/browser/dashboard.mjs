// Drives the hookd dashboard in a real Chromium for tests/browser.rs.
//
// Input (environment): HOOKD_URL, HOOKD_TOKEN (an admin token), HOOK_ID, HOOK_TARGET,
// DELIVERY_ID (a dead delivery whose last response is XSS_SNIPPET), SCREENSHOT (path),
// CHROMIUM (executable, default /usr/bin/chromium).
//
// Protocol with the test on stdout/stdin, one line each:
//   driver -> "READY"  the dead delivery and its escaped snippet were seen; about to retry
//   test   -> "GO"     the receiver now answers 200
//   driver -> "PASS"   the delivery shows delivered; screenshot saved
// Anything else on stdout is progress; failures go to stderr with exit status 1.

import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`environment variable ${name} is not set`);
  return v;
};
const url = env('HOOKD_URL');
const token = env('HOOKD_TOKEN');
const hookId = env('HOOK_ID');
const target = env('HOOK_TARGET');
const deliveryId = env('DELIVERY_ID');
const snippet = env('XSS_SNIPPET');
const screenshot = env('SCREENSHOT');
const executablePath = env('CHROMIUM', '/usr/bin/chromium');

const STEP = 15_000; // the longest any one wait may take
const say = (line) => process.stdout.write(line + '\n');

// Lines from the test, awaited one at a time.
const lines = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on('line', (l) => (waiting.length ? waiting.shift()(l) : pending.push(l)));
lines.on('close', () => waiting.splice(0).forEach((w) => w(null)));
function nextLine(timeoutMs) {
  if (pending.length) return Promise.resolve(pending.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no line from the test within ${timeoutMs} ms`)), timeoutMs);
    waiting.push((l) => {
      clearTimeout(t);
      resolve(l);
    });
  });
}

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.setDefaultTimeout(STEP);
const problems = [];
page.on('pageerror', (e) => problems.push('page error: ' + e.message));
page.on('console', (m) => {
  if (m.type() === 'error') problems.push('console error: ' + m.text());
});

let status = 0;
try {
  await page.goto(url, { waitUntil: 'load' });
  say('opened ' + url);

  // Sign in; the token must not end up in the URL.
  await page.locator('#token').fill(token);
  await page.locator('#login-form button[type=submit]').click();
  const hookRow = page.locator(`#hooks tr[data-hook-id="${hookId}"]`);
  await hookRow.waitFor({ state: 'visible' });
  check(!page.url().includes(token), 'the token is not in the URL');
  check(await page.evaluate(() => sessionStorage.getItem('hookd.token')) === token,
    'the token is kept in sessionStorage');
  check((await hookRow.locator('td.target').textContent()).includes(target),
    'the hook row shows its target');
  say('signed in; hook listed');

  // The metrics strip shows numbers.
  const delivered = page.locator('[data-metric="delivered"] b');
  await delivered.waitFor();
  check(/^\d+(\.\d+)?$/.test((await delivered.textContent()).trim()), 'metrics strip shows a number');

  // The delivery log with the dead delivery and its hostile response snippet.
  await hookRow.getByRole('button', { name: 'Deliveries' }).click();
  const dead = page.locator(`#deliveries tr[data-delivery-id="${deliveryId}"][data-status="dead"]`);
  await dead.waitFor({ state: 'visible' });
  const pre = dead.locator('pre.snippet').first();
  check((await pre.textContent()).includes(snippet), 'the snippet shows as the literal text');
  await page.getByText('<script>window.__xss=1</script>').first().waitFor({ state: 'visible' });
  const dom = await page.evaluate(() => ({
    xss: typeof window.__xss,
    images: document.querySelectorAll('img').length,
    scripts: Array.from(document.scripts, (s) => s.getAttribute('src')),
    escaped: document.querySelector('pre.snippet').innerHTML,
  }));
  check(dom.xss === 'undefined', `window.__xss is undefined (it is ${dom.xss})`);
  check(dom.images === 0, `no <img> element was injected (found ${dom.images})`);
  check(dom.scripts.length === 1 && dom.scripts[0] === '/ui/app.js',
    'the only script is /ui/app.js: ' + JSON.stringify(dom.scripts));
  check(dom.escaped.includes('&lt;script&gt;'), 'the snippet is a text node (escaped in the DOM)');
  say('dead delivery seen; snippet rendered as text');

  // The test makes the receiver answer 200, then we click Retry.
  say('READY');
  const go = await nextLine(STEP);
  check(go === 'GO', `the test said GO (got ${JSON.stringify(go)})`);
  await dead.getByRole('button', { name: 'Retry' }).click();
  await page.locator(`#deliveries tr[data-delivery-id="${deliveryId}"][data-status="delivered"]`)
    .waitFor({ state: 'visible' });
  // The hook's "last success" follows.
  await page.waitForFunction(
    (id) => {
      const row = document.querySelector(`#hooks tr[data-hook-id="${id}"]`);
      return row && !row.cells[5].textContent.includes('never');
    },
    hookId, { timeout: STEP });
  check(problems.length === 0, 'no page or console errors:\n' + problems.join('\n'));
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  say('PASS');
} catch (e) {
  status = 1;
  console.error(String(e && e.stack ? e.stack : e));
  if (problems.length) console.error(problems.join('\n'));
  try {
    const failShot = join(dirname(screenshot), 'dashboard-failure.png');
    mkdirSync(dirname(failShot), { recursive: true });
    await page.screenshot({ path: failShot, fullPage: true });
    console.error('failure screenshot: ' + failShot);
  } catch (_) {
    // The browser may be gone; the error above is what matters.
  }
} finally {
  lines.close();
  await browser.close();
}
process.exit(status);
