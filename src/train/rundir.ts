/**
 * Output folders (runs, exports, experiment results) are never destroyed or mixed without being asked:
 *
 * - `checkOutputDir` (read-only, before any work): a folder that already holds what the command writes is
 *   refused unless `--resume` continues it or `--overwrite` replaces it; `--resume` on a folder that holds
 *   nothing is refused too; a folder in use by another live process is refused naming its pid.
 * - `claimOutputDir` (once every check has passed): takes the folder's lock (`.ptune.lock`, O_EXCL, holder's
 *   pid; a stale lock of a dead process is taken over), checks again under the lock, and with `--overwrite`
 *   removes what the command writes (and nothing else) just before writing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { lockHolder, tryLock, type HeldLock, type LockOwner } from '../util/lock.js';
import { UserError } from '../util/errors.js';

export const LOCK_FILE = '.ptune.lock';

export interface OutputSpec {
  /** what such a folder holds, for messages: "a run", "an export" */
  what: string;
  /** the names (files or folders) the command writes at the folder's top level */
  names: readonly string[];
  /** present in a folder that can be resumed (a run's config.json); undefined: the command does not resume */
  marker?: string;
  /** where resuming means reusing results already there (LAMA): --resume of an empty folder is refused all the same */
  resumeWord?: string;
}

const checkpointNames = (n: string) => [n, `${n}.tmp`, `${n}.old`];

/** `ptune train` and `ptune import-peft` */
export const RUN_OUTPUTS: OutputSpec = {
  what: 'a run',
  names: ['config.json', 'metrics.jsonl', 'baselines.json', ...checkpointNames('best'), ...checkpointNames('last')],
  marker: 'config.json',
};

/** `ptune export` (every format: peft, table, onnx) */
export const EXPORT_OUTPUTS: OutputSpec = {
  what: 'an export',
  names: [
    'adapter_config.json', 'adapter_model.safetensors', 'ptune_template.json', 'ptune_head.safetensors', 'README.md', 'prompt_table.safetensors', 'config.json',
    'model.onnx', 'model.onnx.data', 'tokenizer.json', 'ptune.json',
  ],
};

/** `ptune lama`: results per mode and relation, reused by --resume */
export const LAMA_OUTPUTS: OutputSpec = {
  what: 'LAMA results',
  names: ['report.json', 'report.md', 'p1.svg', 'majority', 'manual', 'ptune', 'manual+ptune', 'finetune'],
  marker: '*',
  resumeWord: 'reuses its finished tasks',
};

/** `ptune fewglue` */
export const FEWGLUE_OUTPUTS: OutputSpec = {
  what: 'FewGLUE results',
  names: ['report.json', 'report.md', 'runs', 'predictions'],
};

/** The names of `spec` that `dir` holds, in `spec`'s order. */
export function presentOutputs(dir: string, spec: OutputSpec): string[] {
  let entries: Set<string>;
  try {
    entries = new Set(fs.readdirSync(dir));
  } catch {
    return [];
  }
  return spec.names.filter((n) => entries.has(n));
}

function listed(dir: string, names: string[]): string {
  return names.map((n) => (fs.statSync(path.join(dir, n)).isDirectory() ? `${n}/` : n)).join(', ');
}

const LOCK_OPTIONS = { trustLiveOwner: true, staleMs: 10 * 60_000 };

function inUse(dir: string, holder: LockOwner): UserError {
  const since = holder.since ? `, since ${holder.since.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}` : '';
  return new UserError(`${dir} is in use by another ptune process (pid ${holder.pid} on ${holder.host}${since}): wait for it to end, or stop it`);
}

export interface OutputFlags {
  resume?: boolean;
  overwrite?: boolean;
}

export type OutputMode = 'new' | 'resume' | 'overwrite';

function judge(dir: string, spec: OutputSpec, flags: OutputFlags): OutputMode {
  const present = presentOutputs(dir, spec);
  if (flags.resume) {
    const has = spec.marker === '*' ? present.length > 0 : spec.marker !== undefined && present.includes(spec.marker);
    if (!has) {
      const why = !fs.existsSync(dir) ? 'no such folder' : spec.marker !== '*' ? `no ${spec.marker}` : 'it is empty';
      throw new UserError(`--resume: ${dir} holds no ${spec.what.replace(/^an? /, '')} (${why}): nothing to resume; leave out --resume to start one`);
    }
    return 'resume';
  }
  if (present.length === 0) return 'new';
  if (!flags.overwrite) {
    const resume = spec.marker ? `--resume ${spec.resumeWord ?? 'continues it'}, ` : '';
    throw new UserError(`${dir} holds ${spec.what} (${listed(dir, present)}): ${resume}--overwrite replaces it, or choose another --out`);
  }
  return 'overwrite';
}

/**
 * Read-only checks of an output folder before any work: a file in its place, another process using it, what
 * it holds against `--resume` / `--overwrite`.
 */
export function checkOutputDir(dir: string, spec: OutputSpec, flags: OutputFlags): OutputMode {
  if (flags.resume && flags.overwrite) throw new UserError('--resume and --overwrite exclude each other: --resume continues a run, --overwrite replaces it');
  if (flags.resume && spec.marker === undefined) throw new UserError(`--resume: this command does not resume; --overwrite replaces ${spec.what}`);
  if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory()) throw new UserError(`--out: ${dir} is a file, not a folder`);
  const holder = lockHolder(path.join(dir, LOCK_FILE), LOCK_OPTIONS);
  if (holder) throw inUse(dir, holder);
  return judge(dir, spec, flags);
}

/** An output folder this process holds the lock of. */
export interface ClaimedOutput {
  readonly dir: string;
  readonly mode: OutputMode;
  /** with --overwrite: removes what the command writes (call it once all checks have passed, just before writing) */
  clear(): void;
  /** releases the lock; a folder this claim created and nothing was written into is removed */
  release(): void;
}

/**
 * Takes the folder's lock (creating the folder) and checks it again under the lock, as `checkOutputDir` did.
 * `notice` hears of a stale lock taken over.
 */
export function claimOutputDir(dir: string, spec: OutputSpec, flags: OutputFlags, notice?: (line: string) => void): ClaimedOutput {
  const created = !fs.existsSync(dir);
  fs.mkdirSync(dir, { recursive: true });
  const removeIfEmpty = () => {
    if (created && fs.existsSync(dir) && fs.readdirSync(dir).length === 0) fs.rmdirSync(dir);
  };
  const got = tryLock(path.join(dir, LOCK_FILE), LOCK_OPTIONS);
  if ('heldBy' in got) {
    removeIfEmpty();
    throw inUse(dir, got.heldBy);
  }
  const lock: HeldLock = got;
  if (lock.tookOverFrom) {
    const o = lock.tookOverFrom;
    notice?.(`took over the stale lock of ${dir} left by pid ${o.pid}${o.since ? ` (since ${o.since})` : ''}, which no longer runs`);
  }
  let mode: OutputMode;
  try {
    mode = judge(dir, spec, flags);
  } catch (e) {
    lock.release();
    removeIfEmpty();
    throw e;
  }
  return {
    dir,
    mode,
    clear() {
      if (mode !== 'overwrite') return;
      for (const n of presentOutputs(dir, spec)) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
    },
    release() {
      lock.release();
      removeIfEmpty();
    },
  };
}

/** `--out` must not be (or lie inside) an input folder: an export into its own run would overwrite the run. */
export function checkDistinct(out: string, input: string, inputFlag: string): void {
  const a = path.resolve(out);
  const b = path.resolve(input);
  if (a === b || a.startsWith(b + path.sep)) throw new UserError(`--out ${out} is inside ${inputFlag} ${input}: write to another folder`);
}
