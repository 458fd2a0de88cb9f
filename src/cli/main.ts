import { Command, CommanderError } from 'commander';
import { registerModelCommands } from './model-commands.js';
import { registerLamaCommand } from './lama-command.js';
import { registerTrainCommands } from './train-commands.js';
import { registerFewGlueCommand } from './fewglue-command.js';
import { registerServeCommands } from './serve-commands.js';
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
    .option('--threads <n>', 'ONNX Runtime threads (default: the number of cores)')
    .option('--runtime <name>', 'node (onnxruntime-node, default) or web (onnxruntime-web, WebAssembly)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.hook('preAction', (cmd) => {
    const { threads, runtime } = cmd.opts() as { threads?: string; runtime?: string };
    if (threads !== undefined) {
      const n = Number(threads);
      if (!Number.isInteger(n) || n < 1) throw new UserError(`--threads: expected a positive integer, got ${JSON.stringify(threads)}`);
      process.env.PTUNE_THREADS = String(n);
    }
    if (runtime !== undefined) {
      if (runtime !== 'node' && runtime !== 'web') throw new UserError(`--runtime: expected node or web, got ${JSON.stringify(runtime)}`);
      process.env.PTUNE_RUNTIME = runtime;
    }
  });

  registerModelCommands(program);
  registerLamaCommand(program);
  registerTrainCommands(program);
  registerFewGlueCommand(program);
  registerServeCommands(program);

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
