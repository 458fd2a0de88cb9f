/**
 * Learning-rate schedules as multipliers of each group's base lr, evaluated for the optimizer step about to be
 * taken: `step` = optimizer steps already taken (0 for the first), `epoch` = epochs already completed.
 *
 * - constant: 1 (after an optional linear warmup: transformers' get_constant_schedule_with_warmup).
 * - linear: transformers' get_linear_schedule_with_warmup: step/warmup during warmup, then linear decay to 0
 *   at `totalSteps` (0 afterwards).
 * - exponential: gamma^epoch, torch's ExponentialLR stepped once per epoch (THUDM P-tuning LAMA: gamma 0.98).
 */
export type ScheduleConfig =
  | { kind: 'constant'; warmupSteps?: number }
  | { kind: 'linear'; warmupSteps?: number; totalSteps: number }
  | { kind: 'exponential'; gamma?: number };

export type Schedule = (step: number, epoch: number) => number;

export function makeSchedule(cfg: ScheduleConfig): Schedule {
  switch (cfg.kind) {
    case 'constant': {
      const warmup = nonNegativeInt(cfg.warmupSteps ?? 0, 'constant schedule: warmupSteps');
      return (step) => (step < warmup ? step / Math.max(1, warmup) : 1);
    }
    case 'linear': {
      const warmup = nonNegativeInt(cfg.warmupSteps ?? 0, 'linear schedule: warmupSteps');
      const total = nonNegativeInt(cfg.totalSteps, 'linear schedule: totalSteps');
      if (total < warmup) throw new Error(`linear schedule: totalSteps ${total} is below warmupSteps ${warmup}`);
      return (step) => {
        if (step < warmup) return step / Math.max(1, warmup);
        return Math.max(0, (total - step) / Math.max(1, total - warmup));
      };
    }
    case 'exponential': {
      const gamma = cfg.gamma ?? 0.98;
      if (!(gamma > 0 && gamma <= 1)) throw new Error(`exponential schedule: gamma must be in (0, 1], got ${gamma}`);
      return (_step, epoch) => gamma ** epoch;
    }
    default:
      throw new Error(`schedule: unknown kind '${(cfg as { kind: string }).kind}'`);
  }
}

function nonNegativeInt(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0) throw new Error(`${what} must be a non-negative integer, got ${v}`);
  return v;
}
