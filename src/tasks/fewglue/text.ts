/** Small text normalizations the loaders derive pattern fields with. */

const TRAILING_PUNCT = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~\s]+$/;

/** "The man turned on the faucet." → "The man turned on the faucet" (so a pattern can add its own "?" or "because") */
export function stripFinalPunct(s: string): string {
  return s.replace(TRAILING_PUNCT, '');
}

/** Lowercases the first letter so a sentence can continue another one; leaves the pronoun "I" alone. */
export function lowercaseFirst(s: string): string {
  if (/^I\b/.test(s)) return s;
  return s.charAt(0).toLowerCase() + s.slice(1);
}

/** Python's str.split(): whitespace runs separate words, no empty words. */
export function words(s: string): string[] {
  return s.split(/\s+/).filter((w) => w !== '');
}
