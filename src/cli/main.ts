import { Command, CommanderError } from 'commander';
import { registerModelCommands } from './model-commands.js';
import { registerLamaCommand } from './lama-command.js';
import { registerTrainCommands } from './train-commands.js';
import { registerFewGlueCommand } from './fewglue-command.js';
import { UserError } from '../util/errors.js';

/**
 * `ptune` entry point. Returns the exit code; errors print one line (the stack only with --verbose).
 */
export async function main(argv: string[]): Promise<number> {
  const program = new Command();
  program
    .name('ptune')
    .description('P-tuning (GPT Understands, Too): continuous prompts for BERT, GPT-2 and Llama on Node')
    .option('--verbose', 'print stack traces on errors')
    .option('--backend <name>', 'tensor backend: wasm (default) or cpu')
    .option('--engine <name>', 'LM engine: ort (ONNX Runtime graphs, default when available) or tfjs')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.hook('preAction', (cmd) => {
    const { backend, engine } = cmd.opts() as { backend?: string; engine?: string };
    if (backend) process.env.PTUNE_BACKEND = backend;
    if (engine) {
      if (engine !== 'ort' && engine !== 'tfjs') throw new UserError(`--engine must be ort or tfjs, got ${engine}`);
      process.env.PTUNE_ENGINE = engine;
    }
  });

  registerModelCommands(program);
  registerLamaCommand(program);
  registerTrainCommands(program);
  registerFewGlueCommand(program);

  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    const verbose = argv.includes('--verbose');
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`ptune: ${msg.split('\n')[0]}\n`);
    if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
    return err instanceof UserError ? err.exitCode : 1;
  }
}
