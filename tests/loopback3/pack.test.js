// `npm pack` of clients/loopback3 works offline and ships exactly the package's files;
// the tarball installs offline (it has no dependencies) and loads as a mixin, under its
// package name and through its loopback-boot folder.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { REPO } from './harness.js';

const run = promisify(execFile);
const PACKAGE = path.join(REPO, 'clients', 'loopback3');
const FILES = [
  'README.md',
  'index.js',
  'lib/change.js',
  'lib/publisher.js',
  'mixins/change-stream-publisher.js',
  'package.json',
];

test('npm pack: the file list, and the tarball installs and loads offline', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'cs-lb3-pack-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const npm = { cwd: PACKAGE, timeout: 60_000, env: { ...process.env, npm_config_offline: 'true' } };
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], npm);
  const [packed] = JSON.parse(stdout);
  assert.equal(packed.name, '@changestream/loopback3');
  const tarball = path.join(dir, packed.filename);
  const listed = (await run('tar', ['-tzf', tarball], { timeout: 10_000 })).stdout.trim().split('\n').sort();
  assert.deepEqual(listed, FILES.map((f) => `package/${f}`).sort());

  const app = path.join(dir, 'app');
  await run('mkdir', ['-p', app]);
  await writeFile(path.join(app, 'package.json'), '{"name":"pack-check","private":true}\n');
  await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball], { ...npm, cwd: app });
  const load = createRequire(path.join(app, 'index.js'));
  const mixin = load('@changestream/loopback3');
  assert.equal(typeof mixin, 'function');
  assert.equal(mixin.length, 2, 'module.exports = function (Model, options)');
  assert.equal(load('@changestream/loopback3/mixins/change-stream-publisher.js'), mixin);
  const manifest = load('@changestream/loopback3/package.json');
  assert.deepEqual(manifest.dependencies ?? {}, {}, 'no runtime dependencies');
  assert.equal(manifest.license, 'Apache-2.0');
});
