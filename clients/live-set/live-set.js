/**
 * live-set.js: a live, ordered collection of LoopBack records, kept by a change stream.
 * No dependencies. This file is the npm package `@changestream/live-set` (clients/live-set,
 * types in live-set.d.ts, a React hook in react.js) and, byte for byte, what the gateway
 * serves at /client/live-set.js.
 *
 *   import { liveSet } from '/client/live-set.js'; // or from '@changestream/live-set'
 *   const todos = liveSet('/api/Todos/change-stream?_format=event-stream', {
 *     onChange(change, set) { render(set.records); },
 *   });
 *   await todos.ready; // stream open and the first records in
 *
 * What it does:
 * - Opens an EventSource on the URL (a LoopBack change stream, `event: data`, or the
 *   multi-topic `/events?topic=A&topic=B`, default event name and a `topic` key).
 * - Keeps the records in a Map per topic keyed by `target` (`0` and string ids are keys
 *   like any other): `create` and `update` put the record (in place if it is there, else
 *   at the end), `remove` deletes it. Every change is a whole state, so applying one twice
 *   or one already reflected in a loaded list does no harm.
 * - `snapshot` (default true with the default REST load): asks the gateway for the records
 *   in the stream itself (`snapshot=true`): `event: snapshot` pages, per topic, gathered
 *   into a fresh Map (by id: a record may come twice, in the same state); the topic's
 *   `last: true` page replaces its set (`onChange({type: 'load'})`) and the changes after
 *   it follow on the same stream. No separate GET, no buffer, no race.
 * - Without snapshots (`snapshot: false`, a custom `load`, or a source that ignores
 *   `snapshot=true`): fetches the list from the REST API (GET /api/{topic}, with the
 *   stream's `options` as its `filter`) *after* the stream is open, buffering the changes
 *   that arrive meanwhile, then applies them in order on top of the list. A change that
 *   raced the GET is either in the list already (re-applying it is harmless) or in the
 *   buffer: nothing is lost.
 * - Falls back to that for good when a topic's change arrives before any snapshot page
 *   (the source ignored `snapshot=true`; that change is buffered), when no page arrives
 *   within `snapshotTimeout` of the stream's opening, or when the stream is refused with a
 *   409 (a topic fed by raw publishes keeps no records). A snapshot page that arrives
 *   anyway is still used: it supersedes a GET in flight (the changes after it continue
 *   from its position, which may be newer than the GET's).
 * - `event: reset` (history trimmed while the client was away): calls `onReset`; with
 *   snapshots it waits for the fresh snapshot the gateway sends after the reset (the set
 *   shown meanwhile is the old one), else it drops the buffer and reloads by GET.
 * - The browser's EventSource reconnects by itself with `Last-Event-ID`. A reconnect
 *   without an id (dropped before the snapshot's last page, or before any event) cannot
 *   resume: with snapshots the gateway sends a fresh one and the pages gathered so far
 *   are dropped; without, the set reloads. When the browser gives up (an HTTP error such
 *   as a 503 closes it for good), a new one is opened after a backoff, resuming with
 *   `?last_event_id=`; if it never opened, the status is asked once and reported.
 *
 * @param {string} url change stream URL, absolute or relative to the page
 * @param {object} [options]
 * @param {boolean|function(string): Promise<object[]>} [options.load=true] true: GET the
 *   collection from the REST API (`options.api`/{topic}, with the stream's `options` query
 *   as `filter`); a function: called with the topic, returns the records; false: start
 *   empty (nothing to reload on reset).
 * @param {boolean} [options.snapshot] ask for the records in the stream (`snapshot=true`)
 *   instead of loading them; default true when `load` is the default REST load, else
 *   false. False forces the load path (e.g. for a LoopBack server). A topic fed by raw
 *   publishes keeps no records, so it has neither: give it `load: false`.
 * @param {number} [options.snapshotTimeout=10000] ms after the stream opens (again from
 *   each reopen) within which a snapshot page must arrive; else the set loads by GET.
 * @param {string} [options.api] REST base URL; by default the path before
 *   `/{topic}/change-stream`, or `/api` for `/events`.
 * @param {string} [options.idName='id'] the records' id property (LoopBack's idName).
 * @param {function(object, LiveSet)} [options.onChange] after each applied change, with
 *   the change object (plus `topic` and the event `id`), and after each (re)load or
 *   snapshot with `{type: 'load', topic}`.
 * @param {function(object, LiveSet)} [options.onReset] with the reset's JSON
 *   (`{reason, lastEventId, resumeFrom, topic?}`), before the reload or snapshot.
 * @param {function(string, LiveSet)} [options.onStatus] 'connecting', 'live', 'reconnecting'
 *   or 'closed'.
 * @param {function(Error, LiveSet)} [options.onError] a failed load (retried), a server
 *   `event: error`, or a stream refused before it ever opened (`error.status`, e.g. 400
 *   for a bad filter; retried with backoff like any give-up).
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
  /**
   * topic -> that topic's next set, on its way; its changes wait in `buffer`:
   * `{kind: 'snapshot', records, pages}` gathers the snapshot's pages (`records` becomes
   * the set on the last one), `{kind: 'load'}` waits for the GET. Both have `done`, a
   * promise that resolves when the topic is in (by this one or by one that superseded it).
   */
  #pending = new Map();
  /** Whether the set asks for snapshots (false for good once it fell back to loading). */
  #snapshots;
  /** Whether the current EventSource asked for them (its URL has `snapshot=true`). */
  #asked = false;
  /** Fires when no snapshot page came in time after an open or a reset (then: GET). */
  #snapshotTimer = null;
  /** Topics in at least once: `ready` resolves when all are. */
  #loaded = new Set();
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
    this.#snapshots = options.snapshot ?? (options.load === undefined || options.load === true);
    const { topics, api } = describe(this.#url);
    this.#topics = topics;
    this.#api = options.api ?? api;
    for (const topic of topics) this.#sets.set(topic, new Map());
    /** Resolves once the stream is open and every topic's first records are in. */
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

  /** Whether the set takes its records from in-band snapshots (false: it loads by GET). */
  get snapshots() {
    return this.#snapshots;
  }

  /**
   * Loads every topic again by GET (changes arriving meanwhile are kept, as at start); a
   * topic whose snapshot pages are arriving is left to its snapshot, which is newer.
   */
  reload() {
    return Promise.all(this.#topics.map((topic) => {
      const pending = this.#pending.get(topic);
      return pending?.kind === 'snapshot' && pending.pages > 0 ? pending.done : this.#load(topic);
    }));
  }

  /** Closes the stream; no more callbacks. */
  close() {
    this.#closed = true;
    this.#source?.close();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#snapshotTimer = null;
    for (const pending of this.#pending.values()) pending.settle();
    this.#pending.clear();
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
    if (this.#snapshots) url.searchParams.set('snapshot', 'true');
    // A new EventSource cannot send Last-Event-ID; the gateway reads the query too.
    if (this.#lastId) url.searchParams.set('last_event_id', this.#lastId);
    if (token) url.searchParams.set('access_token', token);
    const source = new this.#ES(url.href);
    this.#source = source;
    this.#asked = this.#snapshots;
    const onChange = (event) => this.#onMessage(event);
    source.addEventListener('data', onChange);
    source.addEventListener('message', onChange);
    source.addEventListener('snapshot', (event) => this.#onSnapshot(event));
    source.addEventListener('reset', (event) => this.#onReset(event));
    source.addEventListener('open', () => this.#onOpen(source));
    source.addEventListener('error', (event) => this.#onError(source, event));
  }

  #onOpen(source) {
    if (this.#closed || source !== this.#source) return;
    this.#failures = 0;
    const first = !this.#opened;
    this.#opened = true;
    this.#status('live');
    if (this.#asked && this.#snapshots) {
      // Without a position the gateway starts with a snapshot of every topic (a first open,
      // or a reconnect before the snapshot's last page brought the id): gather them afresh,
      // dropping pages of an earlier connection. With one it resumes; a topic still waiting
      // for its reset's snapshot waits for the one that follows its reset again.
      const topics = this.#lastId
        ? this.#topics.filter((t) => this.#pending.get(t)?.kind === 'snapshot')
        : this.#topics;
      for (const topic of topics) this.#stage(topic);
      if (topics.length > 0) this.#armSnapshotTimer();
    } else if (first) {
      // The stream is positioned before the list is read: a change committed after the
      // GET's snapshot is sure to arrive on it.
      for (const topic of this.#topics) this.#load(topic);
    } else if (!this.#lastId) {
      // Reconnected without an id to resume from: what happened meanwhile is unknown.
      for (const topic of this.#topics) this.#load(topic);
    }
  }

  async #onError(source, event) {
    if (this.#closed || source !== this.#source) return;
    if (typeof event.data === 'string') {
      // LoopBack's `event: error`, sent by the server; the connection itself is fine.
      this.#report(new Error(parseMessage(event.data)));
      return;
    }
    // Only time connected counts towards the snapshot's deadline (re-armed on open).
    this.#clearSnapshotTimer();
    if (source.readyState !== 2 /* CLOSED */) {
      this.#status('reconnecting'); // the browser retries by itself, with Last-Event-ID
      return;
    }
    // The browser gave up (an HTTP error status or a non-SSE answer): open a new one.
    this.#status('reconnecting');
    if (!this.#opened) {
      // Refused before it ever opened: EventSource tells nobody why, so ask once.
      const error = await refusal(source.url);
      if (this.#closed || source !== this.#source) return;
      if (error) {
        this.#report(error);
        // A topic fed by raw publishes keeps no records, so it has no snapshot either.
        if (error.status === 409 && this.#asked && this.#snapshots) this.#fallBack();
      }
    }
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
    let pending = this.#pending.get(topic);
    if (pending?.kind === 'snapshot' && pending.pages === 0) {
      // A change before any page of the snapshot it waits for: the source ignored
      // `snapshot=true` (the gateway sends every snapshot before any change). The stream
      // is open, so a GET now is exact, with this change buffered on top of it.
      this.#fallBack();
      pending = this.#pending.get(topic);
    }
    if (pending) pending.buffer.push([change, event.lastEventId]);
    else this.#apply(topic, change, event.lastEventId);
  }

  #onSnapshot(event) {
    if (this.#closed) return;
    // Only the last page carries an id; the others repeat the previous one.
    if (event.lastEventId) this.#lastId = event.lastEventId;
    let page;
    try {
      page = JSON.parse(event.data);
    } catch {
      return;
    }
    if (page === null || typeof page !== 'object' || !Array.isArray(page.records)) return;
    const topic = page.topic ?? this.#topics[0];
    this.#clearSnapshotTimer(); // the source sends snapshots
    let pending = this.#pending.get(topic);
    // A page when none was awaited starts the topic's snapshot all the same: the gateway
    // sends one only where the changes that follow continue from its position, so it
    // supersedes a GET in flight (which may predate that position) and what was buffered
    // (which came before it on the stream, so it is in it).
    if (pending?.kind !== 'snapshot') pending = this.#stage(topic);
    pending.pages += 1;
    for (const record of page.records) {
      if (record && typeof record === 'object') pending.records.set(record[this.#idName], record);
    }
    if (page.last === true) this.#complete(topic, pending, pending.records);
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
    const topics = info.topic === undefined ? this.#topics : [info.topic];
    if (this.#asked && this.#snapshots) {
      // A snapshot stream's reset is followed by a fresh snapshot: gather it, no GET. The
      // old records stay shown until its last page; changes buffered before the reset
      // predate the lost history and the snapshot covers them.
      for (const topic of topics) this.#stage(topic);
      this.#armSnapshotTimer();
      return;
    }
    if (this.#options.load === false) return;
    // Changes buffered before the reset predate the lost history; the new list (read
    // after the reset arrived) covers them. #load starts a fresh buffer.
    for (const topic of topics) this.#load(topic);
  }

  /** Makes `next` the topic's pending state; the one it replaces resolves with it. */
  #begin(topic, next) {
    const previous = this.#pending.get(topic);
    this.#pending.set(topic, next);
    previous?.settle(next.done);
    return next;
  }

  /** Starts gathering `topic`'s snapshot pages into a fresh Map. */
  #stage(topic) {
    return this.#begin(topic, { kind: 'snapshot', records: new Map(), pages: 0, buffer: [], ...deferred() });
  }

  /** Stops waiting for snapshots, for good: topics still without a page load by GET. */
  #fallBack() {
    this.#snapshots = false;
    this.#clearSnapshotTimer();
    for (const [topic, pending] of [...this.#pending]) {
      if (pending.kind === 'snapshot' && pending.pages === 0) this.#load(topic);
    }
  }

  #armSnapshotTimer() {
    this.#clearSnapshotTimer();
    this.#snapshotTimer = this.#later(() => {
      this.#snapshotTimer = null;
      this.#fallBack();
    }, this.#options.snapshotTimeout ?? 10000);
  }

  #clearSnapshotTimer() {
    if (this.#snapshotTimer === null) return;
    clearTimeout(this.#snapshotTimer);
    this.#timers.delete(this.#snapshotTimer);
    this.#snapshotTimer = null;
  }

  /** Resolves when `topic` is loaded, by this load or by one that superseded it. */
  #load(topic) {
    const pending = this.#begin(topic, { kind: 'load', buffer: [], ...deferred() });
    if (this.#options.load === false) {
      // Nothing to load: the topic starts (or stays) as it is.
      this.#pending.delete(topic);
      pending.settle();
      this.#markLoaded(topic);
    } else {
      this.#loadInto(topic, pending);
    }
    return pending.done;
  }

  async #loadInto(topic, pending) {
    for (;;) {
      // Closed, or a newer load or snapshot took over (and resolves `done`).
      if (this.#closed || this.#pending.get(topic) !== pending) return;
      let list;
      try {
        list = await this.#fetchList(topic);
      } catch (error) {
        this.#report(error);
        await new Promise((resolve) => this.#later(resolve, this.#backoff()));
        continue;
      }
      if (this.#closed || this.#pending.get(topic) !== pending) return;
      this.#failures = 0;
      const set = new Map();
      for (const record of list) {
        if (record && typeof record === 'object') set.set(record[this.#idName], record);
      }
      this.#complete(topic, pending, set);
      return;
    }
  }

  /** The topic's new set is in: shown, then what was buffered on top of it. */
  #complete(topic, pending, set) {
    this.#sets.set(topic, set);
    this.#pending.delete(topic);
    this.#options.onChange?.({ type: 'load', topic }, this);
    for (const [change, id] of pending.buffer) this.#apply(topic, change, id);
    pending.settle();
    this.#markLoaded(topic);
  }

  #markLoaded(topic) {
    this.#loaded.add(topic);
    if (this.#topics.every((t) => this.#loaded.has(t))) this.#resolveReady(this);
  }

  async #fetchList(topic) {
    if (typeof this.#options.load === 'function') {
      const list = await this.#options.load(topic);
      if (!Array.isArray(list)) throw new Error(`load(${topic}) did not return an array`);
      return list;
    }
    // The stream's filter (`options.<topic>` wins on /events) is the list's: `where` and
    // `fields` mean the same to both.
    const filter = this.#url.searchParams.get(`options.${topic}`) ?? this.#url.searchParams.get('options');
    let url = `${this.#api}/${encodeURIComponent(topic)}`;
    if (filter !== null) url += `?filter=${encodeURIComponent(filter)}`;
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
    return timer;
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

/** A promise and the function that resolves it. */
function deferred() {
  let settle;
  const done = new Promise((resolve) => {
    settle = resolve;
  });
  return { done, settle };
}

/**
 * Why a stream URL is refused: an Error with `status` and the server's message (LoopBack's
 * JSON error), or null when it answers 200 now or cannot be reached. The body of a 200 is
 * not read (the request is aborted at once).
 */
async function refusal(url) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, {
      headers: { accept: 'text/event-stream' },
      cache: 'no-store',
      signal: abort.signal,
    });
    if (response.ok) return null;
    let message = response.statusText;
    try {
      message = (await response.json()).error?.message ?? message;
    } catch {
      // not LoopBack's JSON: the status says it
    }
    const error = new Error(`change stream refused: ${response.status} ${message}`.trim());
    error.status = response.status;
    return error;
  } catch {
    return null;
  } finally {
    abort.abort();
  }
}

function parseMessage(text) {
  try {
    return JSON.parse(text).message ?? text;
  } catch {
    return text;
  }
}
