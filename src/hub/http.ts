/**
 * The HTTP side of the Hub client: one request with the token (sent to the Hub's own origin only), a timeout,
 * retries with exponential backoff on network failures, 5xx and 429, and the Hub's error headers kept for the
 * messages.
 */

export interface HttpSettings {
  /** the Hub endpoint, e.g. https://huggingface.co; the token goes to this origin only */
  endpoint: string;
  token?: string;
  fetch: typeof fetch;
  /** tries after the first one for a transient failure (network error, 5xx, 429, a broken download) */
  retries: number;
  /** the first backoff delay; it doubles on each retry (capped at 10 s) */
  retryDelayMs: number;
  /** how long to wait for response headers, and for more bytes of a download, before giving up on a try */
  timeoutMs: number;
}

/** An HTTP error status from the Hub (not retried), with its X-Error-Code / X-Error-Message headers. */
export class HubHttpError extends Error {
  constructor(
    readonly status: number,
    readonly url: string,
    readonly errorCode: string | undefined,
    readonly errorMessage: string | undefined,
  ) {
    super(`HTTP ${status} from ${url}${errorCode ? ` (${errorCode})` : ''}${errorMessage ? `: ${errorMessage}` : ''}`);
    this.name = 'HubHttpError';
  }
}

/** The Hub could not be reached, or kept failing (network error, timeout, 5xx, 429), after every try. */
export class HubUnreachableError extends Error {
  constructor(
    readonly url: string,
    readonly reason: string,
    readonly tries: number,
  ) {
    super(`${new URL(url).host}: ${reason} (${tries} ${tries === 1 ? 'try' : 'tries'}, ${url})`);
    this.name = 'HubUnreachableError';
  }
}

/** A failure worth another try: what `retrying` retries. */
export class TransientError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'TransientError';
  }
}

const USER_AGENT = 'ptune';
const MAX_DELAY_MS = 10_000;

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function oneLine(s: string | null | undefined): string | undefined {
  const v = s?.replace(/\s+/g, ' ').trim();
  return v ? v : undefined;
}

/** What made a fetch throw, in a few words: the system error code, a timeout, or the message. */
export function describeFetchFailure(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return `no response within ${timeoutMs / 1000} s`;
  const cause = e?.cause;
  if (cause?.code) return `${cause.code}${cause.message && !cause.message.includes(cause.code) ? ` ${cause.message}` : ''}`;
  return oneLine(cause?.message ?? e?.message) ?? String(err);
}

function retryAfter(res: Response): number | undefined {
  const v = res.headers.get('retry-after');
  if (!v) return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs)) return secs * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

/**
 * Runs `attempt` until it succeeds, retrying on TransientError with exponential backoff (Retry-After honoured, up to
 * the cap); `madeProgress()` true after a failed try (a download that got more bytes) does not use up a try.
 */
export async function retrying<T>(
  s: HttpSettings,
  url: string,
  attempt: () => Promise<T>,
  madeProgress: () => boolean = () => false,
): Promise<T> {
  let failures = 0;
  let tries = 0;
  for (;;) {
    tries++;
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof TransientError)) throw err;
      if (!madeProgress()) failures++;
      if (failures > s.retries) throw new HubUnreachableError(url, err.message, tries);
      const backoff = Math.min(MAX_DELAY_MS, s.retryDelayMs * 2 ** Math.max(0, failures - 1));
      await sleep(Math.min(MAX_DELAY_MS, Math.max(backoff, err.retryAfterMs ?? 0)));
    }
  }
}

function sameOrigin(a: string, b: string): boolean {
  return new URL(a).origin === new URL(b).origin;
}

/** Redirects are never followed by fetch itself: a 3xx comes back as it is (see getFollowing). */
export interface RequestInit2 {
  method?: 'GET' | 'HEAD';
  headers?: Record<string, string>;
}

/**
 * One try of a request: the token on the Hub's origin, Accept-Encoding identity (sizes and ranges are the file's),
 * a timeout on the response headers. Transient failures throw TransientError; other error statuses HubHttpError;
 * 2xx and 3xx come back. The returned `abort` cancels the body (downloads use it for a stalled transfer).
 */
export async function requestOnce(
  s: HttpSettings,
  url: string,
  init: RequestInit2 = {},
): Promise<{ res: Response; abort: (reason?: unknown) => void }> {
  const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...init.headers };
  if (s.token && sameOrigin(url, s.endpoint)) headers.authorization = `Bearer ${s.token}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException('timeout', 'TimeoutError')), s.timeoutMs);
  let res: Response;
  try {
    res = await s.fetch(url, { method: init.method ?? 'GET', headers, redirect: 'manual', signal: controller.signal });
  } catch (err) {
    throw new TransientError(describeFetchFailure(err, s.timeoutMs));
  } finally {
    clearTimeout(timer);
  }
  if (res.ok || (res.status >= 300 && res.status < 400)) return { res, abort: (r) => controller.abort(r) };
  const errorCode = oneLine(res.headers.get('x-error-code'));
  const errorMessage = oneLine(res.headers.get('x-error-message'));
  await res.body?.cancel().catch(() => {});
  if (isTransientStatus(res.status)) {
    throw new TransientError(`HTTP ${res.status}${errorMessage ? ` (${errorMessage})` : ''}`, retryAfter(res));
  }
  throw new HubHttpError(res.status, url, errorCode, errorMessage);
}

/** A request with retries (see requestOnce and retrying). */
export function request(s: HttpSettings, url: string, init: RequestInit2 = {}): Promise<{ res: Response; abort: (reason?: unknown) => void }> {
  return retrying(s, url, () => requestOnce(s, url, init));
}

/**
 * One try of a GET that follows redirects itself (at most 10), so that the token never leaves the Hub's origin: the
 * Authorization header is only added for URLs on the endpoint's origin (see requestOnce).
 */
export async function getFollowing(
  s: HttpSettings,
  url: string,
  headers: Record<string, string> = {},
): Promise<{ res: Response; url: string; abort: (reason?: unknown) => void }> {
  let current = url;
  for (let hop = 0; hop <= 10; hop++) {
    const { res, abort } = await requestOnce(s, current, { headers });
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      await res.body?.cancel().catch(() => {});
      current = new URL(location, current).href;
      continue;
    }
    if (res.status >= 300 && res.status < 400) throw new HubHttpError(res.status, current, undefined, 'redirect without a Location');
    return { res, url: current, abort };
  }
  throw new HubHttpError(310, url, undefined, 'too many redirects');
}
