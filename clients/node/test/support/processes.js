// Test support (not a test): starts the real sandbox and broker binaries on ephemeral
// ports, each test its own, and stops them when the test ends (also on failure, and as a
// last resort when the test process exits). TOKENBROKER names the binary.
'use strict';
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const TOKENBROKER =
  process.env.TOKENBROKER || path.resolve(__dirname, '..', '..', '..', '..', 'target', 'debug', 'tokenbroker');
const START_TIMEOUT_MS = 20_000;

/** Every child still running, killed if the test process exits first. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** One child process and its stderr so far. */
class Child {
  constructor(args, env) {
    this.log = '';
    this.process = spawn(TOKENBROKER, args, {
      env: { ...process.env, RUST_LOG: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(this.process);
    this.exited = new Promise((resolve) => {
      this.process.on('exit', (code, signal) => {
        running.delete(this.process);
        resolve({ code, signal });
      });
    });
    for (const stream of [this.process.stdout, this.process.stderr]) {
      stream.setEncoding('utf8');
      stream.on('data', (text) => (this.log += text));
    }
  }

  /** The `addr=` of the first log line holding `marker`; rejects if the child exits first. */
  async address(marker) {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let gone = false;
    this.exited.then(() => (gone = true));
    while (Date.now() < deadline) {
      const line = this.log.split('\n').find((l) => l.includes(marker));
      const match = line && /addr=(\S+)/.exec(line);
      if (match) return match[1];
      if (gone) throw new Error(`${TOKENBROKER} exited before "${marker}":\n${this.log}`);
      await sleep(25);
    }
    throw new Error(`no "${marker}" within ${START_TIMEOUT_MS} ms:\n${this.log}`);
  }

  /** Sends `signal` and waits for the exit. */
  async stop(signal = 'SIGTERM') {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
    return this.exited;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `promise`'s value, or `fallback` if it has not settled within `ms` (the timer is cleared). */
async function within(promise, ms, fallback) {
  let timer;
  const late = new Promise((resolve) => (timer = setTimeout(resolve, ms, fallback)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `probe` until it returns something other than undefined (errors count as not
 * yet), up to `timeoutMs`; returns that value. The last error is reported at the timeout.
 */
async function eventually(probe, { timeoutMs = 20_000, intervalMs = 50, what = 'the condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() >= deadline) {
      throw new Error(`${what} did not happen within ${timeoutMs} ms${last ? `: ${last.stack || last}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** The sandbox platform; `url` is its base URL. */
class Sandbox {
  static async start({ tokenLifetime = '1h' } = {}) {
    const child = new Child(['sandbox', '--listen', '127.0.0.1:0', '--token-lifetime', tokenLifetime, '--users', '10']);
    const addr = await child.address('sandbox listening');
    return new Sandbox(child, `http://${addr}`);
  }

  constructor(child, url) {
    this.child = child;
    this.url = url;
  }

  /** GET /sandbox/stats: the platform's request counters. */
  async stats() {
    return (await fetch(`${this.url}/sandbox/stats`)).json();
  }

  /** POST a JSON body to a sandbox route; throws unless 2xx. */
  async post(route, body) {
    const response = await fetch(`${this.url}${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`${route}: ${response.status} ${await response.text()}`);
  }

  stop() {
    return this.child.stop();
  }
}

/** A broker in front of a Sandbox; `target` is what clients connect to. */
class Broker {
  /**
   * @param {Sandbox} sandbox
   * @param {object} [options]
   * @param {string} [options.listen] '127.0.0.1:0' by default, or 'unix:///path'
   * @param {string} [options.extraConfig] TOML appended to the config
   * @param {string} [options.dir] where the config goes; a fresh temporary folder by default
   */
  static async start(sandbox, { listen = '127.0.0.1:0', extraConfig = '', dir } = {}) {
    const folder = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbroker-node-'));
    const config = path.join(folder, 'broker.toml');
    fs.writeFileSync(
      config,
      [
        '[orgs.demo]',
        `token_url = "${sandbox.url}/oauth/token"`,
        `authorization_grant_url = "${sandbox.url}/oauth/authorization-grant"`,
        'client_id = "demo-client"',
        'client_secret_env = "DEMO_SECRET"',
        extraConfig,
      ].join('\n'),
    );
    const broker = new Broker(folder, config);
    await broker.#run(listen);
    return broker;
  }

  #config;

  constructor(dir, config) {
    this.dir = dir;
    this.#config = config;
    this.child = null;
    this.target = null;
  }

  async #run(listen) {
    this.child = new Child(['--config', this.#config, '--listen', listen], { DEMO_SECRET: 'demo-secret' });
    const addr = await this.child.address('tokenbroker listening');
    this.target = listen.startsWith('unix://') ? listen : addr;
  }

  /** SIGTERM, and the exit. */
  stop() {
    return this.child.stop();
  }

  /** Starts the broker again on the port it had (retrying while the port is busy). */
  async restart() {
    const target = this.target;
    await eventually(() => this.#run(target).then(() => true), { what: `restarting on ${target}`, intervalMs: 200 });
  }
}

/** Starts a sandbox and a broker, stopped by `t.after`. */
async function startBroker(t, { tokenLifetime, listen, extraConfig } = {}) {
  const sandbox = await Sandbox.start({ tokenLifetime });
  t.after(() => sandbox.stop());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbroker-node-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const broker = await Broker.start(sandbox, { listen, extraConfig, dir });
  t.after(() => broker.stop());
  return { sandbox, broker };
}

/** A random API key and the [[callers]] entry that admits it. */
function apiKeyCaller() {
  const key = crypto.randomBytes(24).toString('hex');
  const sha = crypto.createHash('sha256').update(key).digest('hex');
  const config = [
    '[[callers]]',
    'name = "tests"',
    `api_key_sha256 = ["${sha}"]`,
    'orgs = ["*"]',
    'permissions = ["org_token", "user_token", "refresh", "watch"]',
  ].join('\n');
  return { key, config };
}

module.exports = { TOKENBROKER, Sandbox, Broker, startBroker, apiKeyCaller, eventually, sleep, within };
