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
