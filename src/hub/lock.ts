import fs from 'node:fs';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { sleep } from './http.js';

/**
 * A lock file per blob (`blobs/<etag>.lock`), so that two processes downloading the same model do not write the
 * same `.incomplete` file. Taken with O_EXCL; it holds the owner's host, pid and a nonce, and the owner touches
 * it while it works. A lock is stale, and is broken, when its owner is a dead process on this host, or when it has
 * not been touched for `staleMs` (an owner on another host, or a hung one).
 *
 * The lock only avoids double work: a blob only ever appears by an atomic rename of a verified file, so the
 * cache stays correct even if two owners ever overlapped.
 */

export interface LockOptions {
  /** a lock untouched for this long is stale (default 60 s; the owner touches it every staleMs / 4) */
  staleMs?: number;
  /** how often a waiter looks again (default 100 ms) */
  pollMs?: number;
  /** called once when the lock is found held by another owner */
  onWait?: () => void;
}

interface Owner {
  host: string;
  pid: number;
  nonce: string;
}

function readOwner(file: string): { owner?: Owner; mtimeMs: number } | undefined {
  try {
    const mtimeMs = fs.statSync(file).mtimeMs;
    const text = fs.readFileSync(file, 'utf8');
    try {
      const o = JSON.parse(text) as Owner;
      return typeof o.pid === 'number' && typeof o.nonce === 'string' ? { owner: o, mtimeMs } : { mtimeMs };
    } catch {
      return { mtimeMs }; // being written right now, or garbage: judged by its age only
    }
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

function isStale(info: { owner?: Owner; mtimeMs: number }, staleMs: number): boolean {
  if (info.owner && info.owner.host === os.hostname() && !processAlive(info.owner.pid)) return true;
  return Date.now() - info.mtimeMs > staleMs;
}

/** Removes a stale lock unless it changed hands meanwhile (then it is put back). */
function breakLock(file: string, judged: { owner?: Owner }): void {
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

/**
 * Runs `work` holding the lock `file`, unless `done()` becomes true while waiting for it (another process produced
 * the result): then returns undefined without running `work`.
 */
export async function withLock<T>(file: string, done: () => boolean, work: () => Promise<T>, opts: LockOptions = {}): Promise<T | undefined> {
  const staleMs = opts.staleMs ?? 60_000;
  const pollMs = opts.pollMs ?? 100;
  const me: Owner = { host: os.hostname(), pid: process.pid, nonce: randomBytes(8).toString('hex') };
  let waited = false;
  for (;;) {
    if (done()) return undefined;
    let fd: number | undefined;
    try {
      fd = fs.openSync(file, 'wx');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (fd !== undefined) {
      try {
        fs.writeSync(fd, JSON.stringify(me));
      } finally {
        fs.closeSync(fd);
      }
      return await holding(file, me, Math.max(10, staleMs / 4), work);
    }
    const info = readOwner(file);
    if (info && isStale(info, staleMs)) {
      breakLock(file, info);
      continue;
    }
    if (!waited) {
      waited = true;
      opts.onWait?.();
    }
    await sleep(pollMs);
  }
}

async function holding<T>(file: string, me: Owner, touchMs: number, work: () => Promise<T>): Promise<T> {
  const touch = setInterval(() => {
    const t = new Date();
    try {
      fs.utimesSync(file, t, t);
    } catch {
      // broken by someone who judged it stale; the work goes on (see the module comment)
    }
  }, touchMs);
  touch.unref();
  try {
    return await work();
  } finally {
    clearInterval(touch);
    if (readOwner(file)?.owner?.nonce === me.nonce) fs.rmSync(file, { force: true });
  }
}
