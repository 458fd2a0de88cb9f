import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { HubServer } from './hub-server.js';
import { modelDir } from './fixtures.js';
import { loadModel } from '../src/models/load.js';
import { sequenceLogits } from '../src/models/forward.js';

const run = promisify(execFile);
const BIN = path.resolve('bin/ptune.js');
const REPO = 'tiny-org/bert-mini';
let hub: HubServer;
let cache: string;

before(async () => {
  hub = await HubServer.start();
  hub.createRepo(REPO);
  const dir = modelDir('bert-mini-lama');
  const files: Record<string, Uint8Array> = {};
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'model.safetensors', 'vocab.txt']) {
    files[f] = fs.readFileSync(path.join(dir, f));
  }
  hub.commit(REPO, files);
  cache = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-hub-cli-'));
});

after(async () => {
  await hub.close();
  fs.rmSync(cache, { recursive: true, force: true });
});

const env = (extra: Record<string, string> = {}) => ({ ...process.env, HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache, ...extra });

test('ptune info org/name downloads the model from HF_ENDPOINT into the cache and prints it', async () => {
  const { stdout } = await run(process.execPath, [BIN, 'info', REPO, '--json'], { env: env() });
  const info = JSON.parse(stdout) as { family: string; parameterCount: number; source: string };
  assert.equal(info.family, 'bert');
  assert.equal(info.parameterCount, 4_764_090);
  assert.match(info.source, /models--tiny-org--bert-mini[/\\]snapshots[/\\][0-9a-f]{40}$/);
  assert.ok(fs.existsSync(path.join(cache, 'models--tiny-org--bert-mini', 'refs', 'main')));
});

test('a model from the cache loads offline and computes what the local directory computes', async () => {
  const before = hub.requests.length;
  const viaHub = await loadModel(REPO, { hub: { offline: true, cacheDir: cache, progress: false } });
  assert.equal(hub.requests.length, before, 'offline: no request');
  const local = await loadModel(modelDir('bert-mini-lama'));
  const ids = [101, 3000, 2003, 1996, 3007, 1997, 103, 1012, 102];
  const [a, b] = [await sequenceLogits(viaHub, ids), await sequenceLogits(local, ids)];
  assert.deepEqual(Array.from(a[6]!.slice(0, 50)), Array.from(b[6]!.slice(0, 50)));
});

test('ptune fill with HF_HUB_OFFLINE=1 works from the cache; a missing repo offline is a one-line error', async () => {
  const { stdout } = await run(process.execPath, [BIN, 'fill', REPO, 'paris is the capital of [MASK] .', '--top', '1', '--json'], { env: env({ HF_HUB_OFFLINE: '1' }) });
  assert.equal((JSON.parse(stdout) as { predictions: { top: { token: string }[] }[] }).predictions[0]!.top[0]!.token, 'paris');
  await assert.rejects(run(process.execPath, [BIN, 'info', 'tiny-org/absent'], { env: env({ HF_HUB_OFFLINE: '1' }) }), (e: { stderr: string; code: number }) => {
    assert.equal(e.stderr.trim().split('\n').length, 1, e.stderr);
    assert.match(e.stderr, /^ptune: .*tiny-org\/absent/);
    assert.notEqual(e.code, 0);
    return true;
  });
});
