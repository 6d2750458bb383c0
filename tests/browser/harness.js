// The browser tests' harness: real `redis-server`, `gateway` and `publisher` processes on
// free ports, Debian's Chromium driven by playwright-core, and a small reverse proxy that
// plays the Kubernetes Service + Ingress (one origin; change streams to whichever gateway
// pod is current, the rest of /api to the publisher).
//
// The processes, deadlines and Redis are tests/js/processes.mjs, shared with the other
// Node test packages. Every wait is on a signal (a log line, a proxy event, a condition in
// the page) and has a deadline; nothing sleeps for a fixed time.

import { EventEmitter, once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  Child, REPO, STEP_MS, binary, cleanup, freePort, logField, startRedis, waitOk, within,
} from '../js/processes.mjs';

export { REPO, STEP_MS, binary, cleanup, freePort, startRedis, within };

/**
 * A server binary on 127.0.0.1:0 (or its `*_LISTEN` in `env`); resolves once it logged its
 * address and `/readyz` answers 200 (for a gateway in an outage of the whole fleet that
 * is `degraded`: it serves by telling streams to retry).
 */
async function startServer(name, env) {
  const child = new Child(name, binary(name), [], { RUST_LOG: 'info', ...env }, 'stderr');
  const addr = await child.waitForLine('listening address', (line) => logField(line, 'addr'));
  const base = `http://${addr}`;
  await waitOk(`${name} ready`, `${base}/readyz`);
  return {
    addr,
    base,
    child,
    /** Resolves on the next log line with this message (and `check(fields)` true). */
    waitForLog(message, check = () => true, ms) {
      return child.waitForLine(message, (line) => {
        const value = logField(line, 'message', message);
        if (value === undefined) return undefined;
        const entry = JSON.parse(line);
        return check({ ...entry, ...(entry.fields ?? {}) }) ? entry : undefined;
      }, ms);
    },
    kill: () => child.kill(),
    stop: () => child.kill(),
  };
}

/** A gateway: embedded single-node mode (with the REST API) unless `redisUrl` is given. */
export function startGateway({ redisUrl, env = {} } = {}) {
  return startServer('gateway', {
    GATEWAY_LISTEN: '127.0.0.1:0',
    // Browsers reconnect after the server's `retry:` hint; short keeps the tests quick.
    GATEWAY_RETRY: '300ms',
    ...(redisUrl ? { GATEWAY_REDIS_URL: redisUrl } : {}),
    ...env,
  });
}

/** The REST API on Redis. */
export function startPublisher({ redisUrl }) {
  return startServer('publisher', { PUBLISHER_LISTEN: '127.0.0.1:0', PUBLISHER_REDIS_URL: redisUrl });
}

/** Debian's nginx (`nginx-light`), installed by scripts/test. */
export const NGINX = process.env.NGINX ?? '/usr/sbin/nginx';

/**
 * A real reverse proxy in front of the fleet, as an ingress is: nginx on a free port with
 * `conf(port)` as the body of its `http {}` block (temp paths and logs in its own
 * directory, one process, in the foreground); `files` are written to its directory, its
 * `root`. Resolves once it answers.
 */
export async function startNginx(conf, files = {}) {
  let lastError;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const port = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'cs-nginx-'));
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
    await writeFile(path.join(dir, 'nginx.conf'), `
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  root ${dir};
  ${conf(port)}
}
`);
    const child = new Child(`nginx:${port}`, NGINX, ['-p', dir, '-c', path.join(dir, 'nginx.conf')], {}, 'stderr');
    try {
      await Promise.race([
        waitOk('nginx answers', `http://127.0.0.1:${port}/nginx.conf`),
        child.exited.then(() => { throw new Error(`nginx exited:\n${child.lines.join('\n')}`); }),
      ]);
      return {
        base: `http://127.0.0.1:${port}`,
        async stop() {
          await child.kill();
          await rm(dir, { recursive: true, force: true });
        },
      };
    } catch (error) {
      lastError = error;
      await child.kill();
      await rm(dir, { recursive: true, force: true });
    }
  }
  throw lastError;
}

/**
 * LoopBack 3's documented browser code, verbatim: "Realtime server-sent events", section
 * "Using ChangeStreams in the browser" (the "Browser script" example). No reconnect code.
 */
export const LOOPBACK_SNIPPET = `var urlToChangeStream = '/api/MyModels/change-stream?_format=event-stream';
var src = new EventSource(urlToChangeStream);
src.addEventListener('data', function(msg) {
  var data = JSON.parse(msg.data);
  console.log(data); // the change object
});`;

/** Debian's Chromium, headless; Playwright's own browser builds are never downloaded. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    timeout: STEP_MS,
  });
}

/** JSON REST calls with a deadline; throws on a non-2xx answer. */
export async function rest(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url}: ${response.status} ${text}`);
  return JSON.parse(text);
}

const isStream = (url) => /\/change-stream(\?|$)/.test(url) || /^\/events(\?|$)/.test(url);

/**
 * The Service and Ingress in one: change streams, /events, /client and /demo go to the
 * current gateway (`setGateway`; `null` for "no pod": connections are reset, as a Service
 * without endpoints would; `{status: 502}` for an ingress that answers an error); the rest of /api goes to `api` (the publisher), or to
 * the gateway when there is none (embedded mode). It records each request ('request'
 * events) and can cut the open streams (`cutStreams`).
 */
export class Proxy extends EventEmitter {
  constructor({ gateway, api = null }) {
    super();
    this.gateway = gateway;
    this.api = api;
    this.requests = [];
    this.open = new Set();
    this.server = http.createServer((req, res) => this.#forward(req, res));
  }

  async listen() {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.base = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  /** `host:port`; `null`: connections are reset; `{status}`: answered with that status. */
  setGateway(addr) {
    this.gateway = addr;
  }

  /** Ends every open stream as a network error (the browser then reconnects). */
  cutStreams() {
    for (const res of this.open) res.destroy();
  }

  /** The first recorded request (past or future) for which `match(request)` is true. */
  waitForRequest(what, match, ms = STEP_MS) {
    const seen = this.requests.find(match);
    if (seen) return Promise.resolve(seen);
    return within(`proxy: ${what}`, new Promise((resolve) => {
      const onRequest = (request) => {
        if (match(request)) {
          this.off('request', onRequest);
          resolve(request);
        }
      };
      this.on('request', onRequest);
    }), ms);
  }

  #forward(req, res) {
    const toGateway = isStream(req.url) || !req.url.startsWith('/api/') || this.api === null;
    const backend = toGateway ? this.gateway : this.api;
    const request = {
      method: req.method,
      url: req.url,
      backend,
      lastEventId: req.headers['last-event-id'] ?? null,
      stream: isStream(req.url),
    };
    this.requests.push(request);
    this.emit('request', request);
    if (!backend) {
      req.socket.destroy();
      return;
    }
    if (typeof backend === 'object') {
      res.writeHead(backend.status, { 'content-type': 'text/plain' }).end('no pod\n');
      return;
    }
    const [host, port] = [backend.slice(0, backend.lastIndexOf(':')), backend.slice(backend.lastIndexOf(':') + 1)];
    const upstream = http.request({ host, port, method: req.method, path: req.url, headers: req.headers, agent: false });
    upstream.on('response', (up) => {
      res.writeHead(up.statusCode, up.headers);
      res.flushHeaders();
      if (request.stream) {
        this.open.add(res);
        res.on('close', () => this.open.delete(res));
      }
      up.pipe(res);
      // The pod died mid-response: the browser must see a broken connection, not an end.
      up.on('close', () => {
        if (!up.complete) {
          res.destroy();
          this.emit('upstream-lost', request);
        }
      });
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }

  async close() {
    this.cutStreams();
    this.server.closeAllConnections();
    this.server.close();
  }
}
