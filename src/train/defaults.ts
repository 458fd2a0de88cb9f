/**
 * Training defaults per method, chosen from the measurements in docs/methods.md (SST-2, 2,000 training
 * examples, both mini models, 3 seeds).
 */
export const DEEP_DEFAULTS = {
  /** deep prompts and prompt tuning: virtual tokens */
  numVirtualTokens: 16,
  /** deep prompts: the projection MLP (PEFT prefix_projection) */
  projection: false,
  /** learning rate of the prefix / prompt rows */
  lr: 1e-2,
};

/**
 * With the LM tuned jointly (`--tune-lm`; FewGLUE's ptune-lm and manual-lm): SST-2 with 2,000 training
 * sentences, bert-mini-lama, 72–74 % test accuracy against 52 % with the frozen-prompt settings and LM lr 1e-5
 * (docs/methods.md).
 */
export const TUNE_LM_DEFAULTS = {
  /** the prompt encoder's learning rate */
  lr: 1e-3,
  lmLr: 1e-4,
  lmWeightDecay: 0.1,
  optimizer: 'adamw',
  schedule: 'linear',
} as const;
