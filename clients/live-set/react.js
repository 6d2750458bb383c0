/**
 * useLiveSet: live-set.js as a React hook (React 18 or newer; `react` is an optional peer
 * dependency, imported only by this entry point).
 *
 *   import { useLiveSet } from '@changestream/live-set/react';
 *   function Todos() {
 *     const { records, status, error } = useLiveSet('/api/Todos/change-stream?_format=event-stream');
 *     return <ul>{records.map((t) => <li key={t.id}>{t.title}</li>)}</ul>;
 *   }
 *
 * The set is opened when the component mounts and closed (its EventSource with it) when it
 * unmounts, or when `url` or an option that is not a function changes (then a new one is
 * opened: options are compared by value, so an inline object literal does not reopen it).
 * Function options (`onChange`, `load`, `token`, ...) are always the latest render's; a
 * change of `EventSource` takes effect at the next reopen. A `url` of `null` or
 * `undefined` opens nothing (e.g. until a token is there).
 *
 * Returns `{records, status, error, ready, set}`: the records (a new array after each
 * change, so the component re-renders), the connection's status, the last error reported
 * (cleared when the stream is live again or a topic is loaded), whether the first records
 * are in, and the LiveSet itself (`set.get(id)`, `set.reload()`; null before the effect ran).
 */
import { useEffect, useRef, useState } from 'react';
import { liveSet } from './live-set.js';

/** What the hook shows before its set is open, and with no `url`. */
const IDLE = Object.freeze({ records: Object.freeze([]), status: 'closed', error: null, ready: false, set: null });

export function useLiveSet(url, options = {}) {
  const latest = useRef(options);
  // After every commit, before the effect below (effects run in order): callbacks of the
  // open set call the latest render's functions.
  useEffect(() => {
    latest.current = options;
  });
  const key = url == null ? null : JSON.stringify([String(url), options], settings);
  const [view, setView] = useState(() => (key === null ? IDLE : { ...IDLE, status: 'connecting' }));

  useEffect(() => {
    if (key === null) {
      setView(IDLE);
      return undefined;
    }
    // Callbacks of a set that this effect closed are dropped (its last 'closed' included).
    let active = true;
    const update = (change) => {
      if (active) setView((view) => ({ ...view, ...change }));
    };
    // A new set starts from nothing: no records, error or readiness of the one before.
    setView({ ...IDLE, status: 'connecting' });
    const given = latest.current;
    const forward = (name) => (...args) => latest.current[name]?.(...args);
    const set = liveSet(url, {
      ...given,
      load: typeof given.load === 'function' ? forward('load') : given.load,
      token: typeof given.token === 'function' ? forward('token') : given.token,
      onChange(change, set) {
        update({ records: set.records, ...(change.type === 'load' ? { error: null } : {}) });
        latest.current.onChange?.(change, set);
      },
      onReset: forward('onReset'),
      onStatus(status, set) {
        update(status === 'live' ? { status, error: null } : { status });
        latest.current.onStatus?.(status, set);
      },
      onError(error, set) {
        update({ error });
        if (latest.current.onError) latest.current.onError(error, set);
        else console.warn('live-set:', error);
      },
    });
    update({ set });
    set.ready.then(() => update({ ready: true, records: set.records }));
    return () => {
      active = false;
      set.close();
    };
    // `key` stands for `url` and the options' values; functions are read through `latest`.
  }, [key]);

  return view;
}

/** The options as compared between renders: functions by kind only. */
function settings(_key, value) {
  return typeof value === 'function' ? 'function' : value;
}
