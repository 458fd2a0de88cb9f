import { Command, CommanderError } from 'commander';
import { registerModelCommands } from './model-commands.js';
import { registerLamaCommand } from './lama-command.js';
import { registerTrainCommands } from './train-commands.js';
import { registerFewGlueCommand } from './fewglue-command.js';
import { registerServeCommands } from './serve-commands.js';
import { UserError } from '../util/errors.js';
import { globalSchema, parseOptions } from './options.js';

/**
 * `ptune` entry point. Returns the exit code; errors print one line (the stack only with --verbose).
 */
const GLOBAL_OPTIONS = '--runtime node|web, --threads N, --gradient-checkpointing, --saved-activations float32|float16|auto, --verbose';

/** Commander's own error line, as ptune's: an unknown option says what is accepted. */
function commanderMessage(text: string, argv: string[], commands: string[]): string {
  const msg = text.trim().replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
  if (/^unknown option/.test(msg)) {
    const command = argv.slice(2).find((a) => commands.includes(a));
    return `${msg} (global options: ${GLOBAL_OPTIONS}; \`ptune ${command ?? '<command>'} --help\` lists ${command ? 'its' : 'a command\'s'} own)`;
  }
  return msg;
}

/**
 * `ptune` entry point. Returns the exit code; errors print one line (the stack only with --verbose).
 */
export async function main(argv: string[]): Promise<number> {
  const program = new Command();
  let commanderError = '';
  program
    .name('ptune')
    .description('P-tuning (GPT Understands, Too): continuous prompts for BERT, GPT-2 and Llama on Node')
    .option('--verbose', 'print stack traces on errors')
    .option('--threads <n>', 'ONNX Runtime threads (default: the number of cores)')
    .option('--runtime <name>', 'node (onnxruntime-node, default) or web (onnxruntime-web, WebAssembly)')
    .option('--gradient-checkpointing', "recompute each layer's activations in the backward pass instead of keeping them: less memory, more compute")
    .option('--saved-activations <p>', 'the precision activations are kept in between the forward and backward pass: float32, float16 or auto (default: float16 over quantized weights)')
    .exitOverride()
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      outputError: (s) => {
        commanderError = s;
      },
    });
  program.hook('preAction', (cmd) => {
    const { threads, runtime, gradientCheckpointing, savedActivations } = parseOptions(globalSchema, cmd.opts());
    if (threads !== undefined) process.env.PTUNE_THREADS = String(threads);
    if (gradientCheckpointing) process.env.PTUNE_GRADIENT_CHECKPOINTING = '1';
    if (savedActivations !== undefined) process.env.PTUNE_SAVED_ACTIVATIONS = savedActivations;
    if (runtime !== undefined) process.env.PTUNE_RUNTIME = runtime;
  });

  registerModelCommands(program);
  registerLamaCommand(program);
  registerTrainCommands(program);
  registerFewGlueCommand(program);
  registerServeCommands(program);
  // every command's errors go through the same output (subcommands copy it when they are made)
  for (const c of program.commands) {
    c.exitOverride().configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: (s) => (commanderError = s) });
  }

  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return 0;
      // the help was written (ptune without a command): that is the message
      if (err.code === 'commander.help' || err.code === 'commander.helpDisplayed') return 2;
      const names = program.commands.map((c) => c.name());
      process.stderr.write(`ptune: ${commanderMessage(commanderError || err.message, argv, names)}\n`);
      return 2;
    }
    const verbose = argv.includes('--verbose');
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`ptune: ${msg.split('\n')[0]}\n`);
    if (verbose && err instanceof Error && err.stack) process.stderr.write(err.stack + '\n');
    return err instanceof UserError ? err.exitCode : 1;
  }
}
