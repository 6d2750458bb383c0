// A typed use of @changestream/live-set/react: checked by `tsc --noEmit` in scripts/test
// (tests/browser/tsconfig.live-set.json), never run.
import { useState } from 'react';
import { createRoot } from 'react-dom/client';
import { useLiveSet, type LiveSetView } from '@changestream/live-set/react';

interface Todo {
  id: number;
  title: string;
}

function Todos({ done }: { done: boolean }) {
  const [token] = useState(() => sessionStorage.getItem('jwt') ?? undefined);
  const where = encodeURIComponent(JSON.stringify({ where: { done } }));
  // A new `done` is a new URL: the old stream is closed and a new one opened.
  const { records, status, error, ready, set }: LiveSetView<Todo> = useLiveSet<Todo>(
    `/api/Todos/change-stream?_format=event-stream&options=${where}`,
    { token, onReset: (info) => console.info('history lost', info.reason) },
  );
  if (error) return <p role="alert">{error.message}</p>;
  if (!ready) return <p>{status}…</p>;
  return (
    <ul data-status={status} onDoubleClick={() => void set?.reload()}>
      {records.map((todo) => (
        <li key={todo.id}>{todo.title}</li>
      ))}
    </ul>
  );
}

// Nothing is opened while there is no URL.
function Maybe({ collection }: { collection: string | null }) {
  const view = useLiveSet(collection && `/api/${collection}/change-stream`);
  return <span>{view.status === 'closed' ? '-' : view.records.length}</span>;
}

createRoot(document.getElementById('root')!).render(
  <>
    <Todos done={false} />
    <Maybe collection={null} />
  </>,
);
