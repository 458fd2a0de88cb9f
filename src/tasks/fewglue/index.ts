export * from './tasks.js';
export { loadTask, mirrorCopa } from './loaders.js';
export { loadSst2, readSst2File, type Sst2Options } from './sst2.js';
export { fewShotSplit, seededRandom, shuffled, type FewShotOptions } from './sampling.js';
export {
  accuracy, classF1, macroF1, multircScores, normalizeAnswer, exactMatch, tokenF1, recordScores, wscSpanMatch,
  evaluate, majorityBaseline,
} from './metrics.js';
export {
  loadPatterns, parsePatternFile, patternsDir, templateFor, templateFields, templateTexts, pseudoTokenCount,
  type Pattern, type PatternFile, type Template,
} from './patterns.js';
export { stripFinalPunct, lowercaseFirst } from './text.js';
