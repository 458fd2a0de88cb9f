import fs from 'node:fs';
import os from 'node:os';
import { randomBytes } from 'node:crypto';

/**
 * Lock files taken with O_EXCL. A lock holds its owner's host, pid, process start time (Linux), a nonce and the
 * time it was taken; the owner touches it while it works. A lock is stale, and is broken, when its owner is a
 * process of this host that no longer runs (or whose pid now belongs to a process started later), or when it has
 * not been touched for `staleMs` — for an owner on another host always, and for one on this host only when
 * `trustLiveOwner` is off (the Hub's blob locks: a hung downloader is broken after a while).
 *
 * Two uses: `withLock` waits for a lock (the Hub's blob downloads), `tryLock` takes it at once or says who holds
 * it (run directories: a second writer is refused, not queued).
 */

export interface LockOptions {
  /** a lock untouched for this long is stale (default 60 s; the owner touches it every staleMs / 4) */
  staleMs?: number;
  /** how often a waiter looks again (default 100 ms) */
  pollMs?: number;
  /** called once when the lock is found held by another owner */
  onWait?: () => void;
  /** a live owner on this host is never judged stale by age (default false) */
  trustLiveOwner?: boolean;
}

export interface LockOwner {
  host: string;
  pid: number;
  nonce: string;
  /** the owner process's start time (clock ticks after boot, /proc/<pid>/stat), where the system tells it */
  start?: number;
  /** when the lock was taken (ISO time) */
  since?: string;
}

interface LockInfo {
  owner?: LockOwner;
  mtimeMs: number;
}

function readOwner(file: string): LockInfo | undefined {
  try {
    const mtimeMs = fs.statSync(file).mtimeMs;
    const text = fs.readFileSync(file, 'utf8');
    try {
      const o = JSON.parse(text) as LockOwner;
      return typeof o.pid === 'number' && typeof o.nonce === 'string' ? { owner: o, mtimeMs } : { mtimeMs };
    } catch {
      return { mtimeMs }; // being written right now, or garbage: judged by its age only
    }
  } catch {
    return undefined;
  }
}

/** Start time of process `pid` in clock ticks after boot (Linux), else undefined. */
export function processStart(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: count fields after its closing parenthesis
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const start = Number(fields[19]);
    return Number.isFinite(start) ? start : undefined;
  } catch {
    return undefined;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Whether the owner recorded in a lock is a running process of this host (its pid not reused since). */
function ownerRuns(o: LockOwner): boolean {
  if (!processAlive(o.pid)) return false;
  if (o.start === undefined) return true;
  const now = processStart(o.pid);
  return now === undefined || now === o.start;
}

function isStale(info: LockInfo, staleMs: number, trustLiveOwner: boolean): boolean {
  if (info.owner && info.owner.host === os.hostname()) {
    if (!ownerRuns(info.owner)) return true;
    if (trustLiveOwner) return false;
  }
  return Date.now() - info.mtimeMs > staleMs;
}

/** Removes a stale lock unless it changed hands meanwhile (then it is put back). */
function breakLock(file: string, judged: { owner?: LockOwner }): void {
  const aside = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.stale`;
  try {
    fs.renameSync(file, aside);
  } catch {
    return; // someone else broke or released it
  }
  const now = readOwner(aside);
  if (judged.owner && now?.owner && now.owner.nonce !== judged.owner.nonce) {
    try {
      fs.linkSync(aside, file); // a fresh lock was taken in between: give it back
    } catch {
      // a third owner holds the path now; nothing to give back to
    }
  }
  fs.rmSync(aside, { force: true });
}

function me(): LockOwner {
  return { host: os.hostname(), pid: process.pid, nonce: randomBytes(8).toString('hex'), start: processStart(process.pid), since: new Date().toISOString() };
}

/** Creates `file` with O_EXCL holding `owner`; false when it exists. */
function create(file: string, owner: LockOwner): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    fs.writeSync(fd, JSON.stringify(owner));
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** A lock this process holds. */
export interface HeldLock {
  readonly file: string;
  readonly owner: LockOwner;
  /** the owner of the stale lock this one replaced, if any */
  readonly tookOverFrom?: LockOwner;
  /** removes the lock file (when it is still ours); safe to call twice */
  release(): void;
}

/** locks held by this process, released when it exits (process.exit on a second Ctrl-C included) */
const heldLocks = new Set<() => void>();
let exitHook = false;

function hold(file: string, owner: LockOwner, touchMs: number, tookOverFrom?: LockOwner): HeldLock {
  const touch = setInterval(() => {
    const t = new Date();
    try {
      fs.utimesSync(file, t, t);
    } catch {
      // broken by someone who judged it stale
    }
  }, touchMs);
  touch.unref();
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    clearInterval(touch);
    heldLocks.delete(release);
    if (readOwner(file)?.owner?.nonce === owner.nonce) fs.rmSync(file, { force: true });
  };
  heldLocks.add(release);
  if (!exitHook) {
    exitHook = true;
    process.on('exit', () => {
      for (const r of [...heldLocks]) r();
    });
  }
  return { file, owner, tookOverFrom, release };
}

/** The live owner of lock `file`, or undefined when it is free or stale. */
export function lockHolder(file: string, opts: LockOptions = {}): LockOwner | undefined {
  const info = readOwner(file);
  if (!info || isStale(info, opts.staleMs ?? 60_000, opts.trustLiveOwner ?? false)) return undefined;
  return info.owner ?? { host: '?', pid: -1, nonce: '' };
}

/**
 * Takes lock `file` now: the held lock, or `{ heldBy }` naming the live owner that has it. A stale lock is broken
 * and taken over (`tookOverFrom` says whose it was).
 */
export function tryLock(file: string, opts: LockOptions = {}): HeldLock | { heldBy: LockOwner } {
  const staleMs = opts.staleMs ?? 60_000;
  const owner = me();
  let tookOverFrom: LockOwner | undefined;
  for (let tries = 0; tries < 5; tries++) {
    if (create(file, owner)) return hold(file, owner, Math.max(10, staleMs / 4), tookOverFrom);
    const info = readOwner(file);
    if (!info) continue; // released meanwhile
    if (isStale(info, staleMs, opts.trustLiveOwner ?? false)) {
      tookOverFrom = info.owner;
      breakLock(file, info);
      continue;
    }
    return { heldBy: info.owner ?? { host: '?', pid: -1, nonce: '' } };
  }
  const info = readOwner(file);
  return { heldBy: info?.owner ?? { host: '?', pid: -1, nonce: '' } };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `work` holding the lock `file`, unless `done()` becomes true while waiting for it (another process produced
 * the result): then returns undefined without running `work`.
 */
export async function withLock<T>(file: string, done: () => boolean, work: () => Promise<T>, opts: LockOptions = {}): Promise<T | undefined> {
  const pollMs = opts.pollMs ?? 100;
  let waited = false;
  for (;;) {
    if (done()) return undefined;
    const got = tryLock(file, opts);
    if (!('heldBy' in got)) {
      try {
        return await work();
      } finally {
        got.release();
      }
    }
    if (!waited) {
      waited = true;
      opts.onWait?.();
    }
    await sleep(pollMs);
  }
}
