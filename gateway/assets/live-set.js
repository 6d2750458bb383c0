/**
 * live-set.js: a live, ordered collection of LoopBack records, kept by a change stream.
 * No dependencies; served by the gateway at /client/live-set.js.
 *
 *   import { liveSet } from '/client/live-set.js';
 *   const todos = liveSet('/api/Todos/change-stream?_format=event-stream', {
 *     onChange(change, set) { render(set.records); },
 *   });
 *   await todos.ready; // stream open and the list loaded
 *
 * What it does:
 * - Opens an EventSource on the URL (a LoopBack change stream, `event: data`, or the
 *   multi-topic `/events?topic=A&topic=B`, default event name and a `topic` key).
 * - Keeps the records in a Map per topic keyed by `target` (`0` and string ids are keys
 *   like any other): `create` and `update` put the record (in place if it is there, else
 *   at the end), `remove` deletes it. Every change is a whole state, so applying one twice
 *   or one already reflected in a loaded list does no harm.
 * - `load` (default true): fetches the initial list from the REST API (GET /api/{topic})
 *   *after* the stream is open, buffering the changes that arrive meanwhile, then applies
 *   them in order on top of the list. A change that raced the GET is either in the list
 *   already (re-applying it is harmless) or in the buffer: nothing is lost.
 * - `event: reset` (history trimmed while the client was away): calls `onReset`, drops the
 *   buffer and reloads that topic. A reconnect before any event had an id cannot resume
 *   and reloads too.
 * - The browser's EventSource reconnects by itself with `Last-Event-ID`. When it gives up
 *   (an HTTP error such as a 503 closes it for good), a new one is opened after a backoff,
 *   resuming with `?last_event_id=`.
 *
 * @param {string} url change stream URL, absolute or relative to the page
 * @param {object} [options]
 * @param {boolean|function(string): Promise<object[]>} [options.load=true] true: GET the
 *   collection from the REST API (`options.api`/{topic}); a function: called with the
 *   topic, returns the records; false: start empty (nothing to reload on reset).
 * @param {string} [options.api] REST base URL; by default the path before
 *   `/{topic}/change-stream`, or `/api` for `/events`.
 * @param {string} [options.idName='id'] the records' id property (LoopBack's idName).
 * @param {function(object, LiveSet)} [options.onChange] after each applied change, with
 *   the change object (plus `topic` and the event `id`), and after each (re)load with
 *   `{type: 'load', topic}`.
 * @param {function(object, LiveSet)} [options.onReset] with the reset's JSON
 *   (`{reason, lastEventId, resumeFrom, topic?}`), before the reload.
 * @param {function(string, LiveSet)} [options.onStatus] 'connecting', 'live', 'reconnecting'
 *   or 'closed'.
 * @param {function(Error, LiveSet)} [options.onError] a failed load (retried) or a server
 *   `event: error`.
 * @param {string|function(): (string|Promise<string>)} [options.token] a JWT, for a gateway
 *   with auth on: sent as `?access_token=` on the stream (EventSource cannot send headers)
 *   and as `Authorization: Bearer` on the REST load. A function is asked again for every
 *   (re)open and load, so short-lived tokens renew themselves: at expiry the gateway ends
 *   the stream, the browser's reconnect with the old URL is refused (401), and the set
 *   reopens with a fresh token where it was. Without it, an `access_token` cookie works.
 * @param {typeof EventSource} [options.EventSource] constructor to use (a polyfill that
 *   sends headers, a test double).
 * @param {number} [options.maxBackoff=30000] longest wait (ms) before reopening or reloading.
 * @returns {LiveSet}
 */
export function liveSet(url, options = {}) {
  return new LiveSet(url, options);
}

export class LiveSet {
  #url;
  #options;
  #idName;
  #ES;
  #api;
  /** Topics in URL order; a single change stream has one. */
  #topics;
  /** topic -> Map(target -> record) */
  #sets = new Map();
  /** topic -> {buffer, done}: that topic is loading and its changes wait here. */
  #pending = new Map();
  #source = null;
  #lastId = '';
  #opened = false;
  #closed = false;
  #timers = new Set();
  #failures = 0;
  #resolveReady;

  constructor(url, options = {}) {
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.#url = new URL(url, base);
    this.#options = options;
    this.#idName = options.idName ?? 'id';
    this.#ES = options.EventSource ?? globalThis.EventSource;
    const { topics, api } = describe(this.#url);
    this.#topics = topics;
    this.#api = options.api ?? api;
    for (const topic of topics) this.#sets.set(topic, new Map());
    /** Resolves once the stream is open and the first load applied. */
    this.ready = new Promise((resolve) => {
      this.#resolveReady = resolve;
    });
    this.#open();
  }

  /** The records, in order (for /events: topic by topic, in URL order). */
  get records() {
    const out = [];
    for (const set of this.#sets.values()) out.push(...set.values());
    return out;
  }

  /** How many records are held. */
  get size() {
    let n = 0;
    for (const set of this.#sets.values()) n += set.size;
    return n;
  }

  /** The record with this id (`topic` needed only on a multi-topic stream). */
  get(id, topic = this.#topics[0]) {
    return this.#sets.get(topic)?.get(id);
  }

  /** The id of the last event received: where a reconnect resumes. */
  get lastEventId() {
    return this.#lastId;
  }

  /** Loads every topic again (changes arriving meanwhile are kept, as at start). */
  reload() {
    return Promise.all(this.#topics.map((topic) => this.#load(topic)));
  }

  /** Closes the stream; no more callbacks. */
  close() {
    this.#closed = true;
    this.#source?.close();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#status('closed');
  }

  async #open() {
    this.#status(this.#opened ? 'reconnecting' : 'connecting');
    let token;
    try {
      token = await this.#token();
    } catch (error) {
      this.#report(error);
      this.#later(() => this.#open(), this.#backoff());
      return;
    }
    if (this.#closed) return;
    const url = new URL(this.#url);
    // A new EventSource cannot send Last-Event-ID; the gateway reads the query too.
    if (this.#lastId) url.searchParams.set('last_event_id', this.#lastId);
    if (token) url.searchParams.set('access_token', token);
    const source = new this.#ES(url.href);
    this.#source = source;
    const onChange = (event) => this.#onMessage(event);
    source.addEventListener('data', onChange);
    source.addEventListener('message', onChange);
    source.addEventListener('reset', (event) => this.#onReset(event));
    source.addEventListener('open', () => this.#onOpen());
    source.addEventListener('error', (event) => this.#onError(source, event));
  }

  #onOpen() {
    if (this.#closed) return;
    this.#failures = 0;
    const first = !this.#opened;
    this.#opened = true;
    this.#status('live');
    if (first) {
      // The stream is positioned before the list is read: a change committed after the
      // GET's snapshot is sure to arrive on it.
      const loads = this.#options.load === false ? [] : this.#topics.map((t) => this.#load(t));
      Promise.all(loads).then(() => this.#resolveReady(this));
    } else if (!this.#lastId && this.#options.load !== false) {
      // Reconnected without an id to resume from: what happened meanwhile is unknown.
      this.reload();
    }
  }

  #onError(source, event) {
    if (this.#closed || source !== this.#source) return;
    if (typeof event.data === 'string') {
      // LoopBack's `event: error`, sent by the server; the connection itself is fine.
      this.#report(new Error(parseMessage(event.data)));
      return;
    }
    if (source.readyState !== 2 /* CLOSED */) {
      this.#status('reconnecting'); // the browser retries by itself, with Last-Event-ID
      return;
    }
    // The browser gave up (an HTTP error status or a non-SSE answer): open a new one.
    this.#status('reconnecting');
    this.#later(() => this.#open(), this.#backoff());
  }

  #onMessage(event) {
    if (this.#closed) return;
    if (event.lastEventId) this.#lastId = event.lastEventId;
    let change;
    try {
      change = JSON.parse(event.data);
    } catch {
      return; // not a change object
    }
    if (change === null || typeof change !== 'object') return;
    const topic = change.topic ?? this.#topics[0];
    const pending = this.#pending.get(topic);
    if (pending) pending.buffer.push([change, event.lastEventId]);
    else this.#apply(topic, change, event.lastEventId);
  }

  #onReset(event) {
    if (this.#closed) return;
    if (event.lastEventId) this.#lastId = event.lastEventId;
    let info = {};
    try {
      info = JSON.parse(event.data);
    } catch {
      // a reset without JSON still means history was lost
    }
    this.#options.onReset?.(info, this);
    if (this.#options.load === false) return;
    const topics = info.topic === undefined ? this.#topics : [info.topic];
    // Changes buffered before the reset predate the lost history; the new snapshot
    // (taken after the reset arrived) covers them. #load starts a fresh buffer.
    for (const topic of topics) this.#load(topic);
  }

  /** Resolves when `topic` is loaded, by this load or by one that superseded it. */
  #load(topic) {
    const pending = { buffer: [], done: null };
    this.#pending.set(topic, pending);
    pending.done = this.#loadInto(topic, pending);
    return pending.done;
  }

  async #loadInto(topic, pending) {
    for (;;) {
      if (this.#closed) return;
      // A newer load (a reset) took over: its outcome is this one's.
      if (this.#pending.get(topic) !== pending) return this.#pending.get(topic)?.done;
      let list;
      try {
        list = await this.#fetchList(topic);
      } catch (error) {
        this.#report(error);
        await new Promise((resolve) => this.#later(resolve, this.#backoff()));
        continue;
      }
      if (this.#closed) return;
      if (this.#pending.get(topic) !== pending) return this.#pending.get(topic)?.done;
      this.#failures = 0;
      const set = new Map();
      for (const record of list) {
        if (record && typeof record === 'object') set.set(record[this.#idName], record);
      }
      this.#sets.set(topic, set);
      this.#pending.delete(topic);
      this.#options.onChange?.({ type: 'load', topic }, this);
      for (const [change, id] of pending.buffer) this.#apply(topic, change, id);
      return;
    }
  }

  async #fetchList(topic) {
    if (typeof this.#options.load === 'function') {
      const list = await this.#options.load(topic);
      if (!Array.isArray(list)) throw new Error(`load(${topic}) did not return an array`);
      return list;
    }
    const url = `${this.#api}/${encodeURIComponent(topic)}`;
    const headers = { accept: 'application/json' };
    const token = await this.#token();
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(url, { headers, cache: 'no-store' });
    if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
    const list = await response.json();
    if (!Array.isArray(list)) throw new Error(`GET ${url}: not a JSON array`);
    return list;
  }

  #apply(topic, change, id) {
    let set = this.#sets.get(topic);
    if (!set) {
      set = new Map();
      this.#sets.set(topic, set);
    }
    if (change.type === 'create' || change.type === 'update') {
      if (change.data === undefined) return;
      set.set(change.target, change.data);
    } else if (change.type === 'remove') {
      set.delete(change.target);
    } else {
      return; // not a LoopBack change type
    }
    this.#options.onChange?.({ ...change, topic, id }, this);
  }

  async #token() {
    const { token } = this.#options;
    return typeof token === 'function' ? token() : token;
  }

  #status(state) {
    this.#options.onStatus?.(state, this);
  }

  #report(error) {
    if (this.#options.onError) this.#options.onError(error, this);
    else console.warn('live-set:', error);
  }

  #backoff() {
    const max = this.#options.maxBackoff ?? 30000;
    const delay = Math.min(max, 1000 * 2 ** Math.min(this.#failures, 15));
    this.#failures += 1;
    return delay * (0.5 + Math.random() / 2); // spread reconnects out
  }

  #later(fn, ms) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      if (!this.#closed) fn();
    }, ms);
    this.#timers.add(timer);
  }
}

/** Topics and REST base of a stream URL. */
function describe(url) {
  const change = url.pathname.match(/^(.*)\/([^/]+)\/change-stream\/?$/);
  if (change) {
    return { topics: [decodeURIComponent(change[2])], api: url.origin + change[1] };
  }
  const topics = url.searchParams
    .getAll('topic')
    .flatMap((value) => value.split(','))
    .filter((name) => name !== '');
  const api = url.origin + url.pathname.replace(/\/events\/?$/, '') + '/api';
  return { topics: topics.length ? topics : [''], api };
}

function parseMessage(text) {
  try {
    return JSON.parse(text).message ?? text;
  } catch {
    return text;
  }
}
