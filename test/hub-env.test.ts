import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hubCacheDir, hubEndpoint, hubOffline, hubToken, resolveModel } from '../src/hub/index.js';
import { HubServer } from './hub-server.js';

const VARS = ['HF_HOME', 'XDG_CACHE_HOME', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_ENDPOINT', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH'];
const saved = Object.fromEntries(VARS.map((v) => [v, process.env[v]]));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-hub-env-'));
let server: HubServer;

function clearEnv(): void {
  for (const v of VARS) delete process.env[v];
  process.env.HF_HOME = path.join(tmp, 'home');
}

before(async () => {
  clearEnv();
  server = await HubServer.start();
  server.createRepo('org/m');
  server.commit('org/m', { 'config.json': '{"model_type":"gpt2"}', 'merges.txt': '#v\n', 'vocab.json': '{}', 'model.safetensors': Buffer.alloc(4096, 7) });
});

after(async () => {
  await server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
  for (const v of VARS) {
    if (saved[v] === undefined) delete process.env[v];
    else process.env[v] = saved[v];
  }
});

test('the cache root, endpoint, offline switch and token are read from the environment as huggingface_hub reads them', () => {
  clearEnv();
  delete process.env.HF_HOME;
  assert.equal(hubCacheDir(), path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
  process.env.XDG_CACHE_HOME = '/x';
  assert.equal(hubCacheDir(), '/x/huggingface/hub');
  process.env.HF_HOME = '/h';
  assert.equal(hubCacheDir(), '/h/hub');
  process.env.HF_HUB_CACHE = '~/c';
  assert.equal(hubCacheDir(), path.join(os.homedir(), 'c'));

  assert.equal(hubEndpoint(), 'https://huggingface.co');
  process.env.HF_ENDPOINT = 'http://mirror.example/';
  assert.equal(hubEndpoint(), 'http://mirror.example');

  for (const [v, on] of [['1', true], ['on', true], ['YES', true], ['true', true], ['0', false], ['', false]] as const) {
    process.env.HF_HUB_OFFLINE = v;
    assert.equal(hubOffline(), on, v);
  }

  clearEnv();
  assert.equal(hubToken(), undefined);
  fs.mkdirSync(process.env.HF_HOME!, { recursive: true });
  fs.writeFileSync(path.join(process.env.HF_HOME!, 'token'), 'hf_fromfile\n');
  assert.equal(hubToken(), 'hf_fromfile');
  process.env.HF_TOKEN = 'hf_fromenv';
  assert.equal(hubToken(), 'hf_fromenv');
  clearEnv();
});

test('resolveModel takes HF_ENDPOINT and HF_HUB_CACHE from the environment, and every request goes through an injected fetch', async () => {
  clearEnv();
  const cache = path.join(tmp, 'cache');
  process.env.HF_ENDPOINT = server.endpoint;
  process.env.HF_HUB_CACHE = cache;
  const urls: string[] = [];
  const counting: typeof fetch = (input, init) => {
    urls.push(String(input instanceof Request ? input.url : input));
    return fetch(input, init);
  };
  try {
    const dir = await resolveModel('org/m', { progress: false, fetch: counting });
    assert.equal(dir, path.join(cache, 'models--org--m', 'snapshots', path.basename(dir)));
    assert.deepEqual(fs.readdirSync(dir).sort(), ['config.json', 'merges.txt', 'model.safetensors', 'vocab.json']);
    assert.equal(urls.length, server.requests.length);
    assert.ok(urls.every((u) => u.startsWith(server.endpoint) || u.startsWith(server.lfsOrigin)), urls.join(' '));
    assert.ok(urls[0].startsWith(`${server.endpoint}/api/models/org/m/revision/main`), urls[0]);
  } finally {
    clearEnv();
  }
});
