import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * The Hub settings huggingface_hub reads from the environment, read the same way (at call time, so a caller or a
 * test can change them between calls).
 */

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

function expandUser(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
export function hfHome(): string {
  return expandUser(env('HF_HOME') ?? path.join(env('XDG_CACHE_HOME') ?? path.join(os.homedir(), '.cache'), 'huggingface'));
}

/** The cache root: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub` (see hfHome). */
export function hubCacheDir(): string {
  return expandUser(env('HF_HUB_CACHE') ?? env('HUGGINGFACE_HUB_CACHE') ?? path.join(hfHome(), 'hub'));
}

/** `$HF_ENDPOINT` without a trailing slash, else https://huggingface.co. */
export function hubEndpoint(): string {
  return (env('HF_ENDPOINT') ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
}

/** Whether `$HF_HUB_OFFLINE` (or `$TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE. */
export function hubOffline(): boolean {
  const v = env('HF_HUB_OFFLINE') ?? env('TRANSFORMERS_OFFLINE');
  return v !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(v.toUpperCase());
}

function cleanToken(t: string | undefined): string | undefined {
  const v = t?.replace(/[\r\n]/g, '').trim();
  return v ? v : undefined;
}

/** `$HF_TOKEN`, else `$HUGGING_FACE_HUB_TOKEN`, else the token file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`). */
export function hubToken(): string | undefined {
  const fromEnv = cleanToken(env('HF_TOKEN') ?? env('HUGGING_FACE_HUB_TOKEN'));
  if (fromEnv) return fromEnv;
  const file = expandUser(env('HF_TOKEN_PATH') ?? path.join(hfHome(), 'token'));
  try {
    return cleanToken(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}
