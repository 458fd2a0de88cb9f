import type { Command } from 'commander';
import { initEngine } from '../engine/index.js';
import { loadModel } from '../models/load.js';
import { PromptTable } from '../serve/table.js';
import { createServer, runModel } from '../serve/server.js';
import { UserError } from '../util/errors.js';
import { addQuantizeOptions, asText, parseOptions, quantizeFields, quantizeFrom, serveSchema } from './options.js';
import { z } from '../util/schema.js';

const collect = (v: string, all: string[]) => [...all, v];

/** `NAME=DIR` → { name, dir } */
export function namedDir(spec: string, option: string): { name: string; dir: string } {
  const at = spec.indexOf('=');
  if (at <= 0 || at === spec.length - 1) throw new UserError(`${option} ${JSON.stringify(spec)}: expected NAME=DIR`);
  return { name: spec.slice(0, at), dir: spec.slice(at + 1) };
}


const tableQuantizeSchema = z.object(quantizeFields);

export function registerServeCommands(program: Command): void {
  const tableCmd = program
    .command('table')
    .description('pack tuned prompts of several runs (one base model) into a prompt table directory for ptune serve')
    .option('--run <name=dir>', 'a task: its name and run directory (repeatable)', collect, [] as string[])
    .option('--peft <name=dir>', 'a task from a PEFT P-tuning adapter exported by ptune (repeatable)', collect, [] as string[])
    .option('--model <dir>', 'the base model (default: the one the first run names)')
    .requiredOption('--out <dir>', 'table directory to write');
  addQuantizeOptions(tableCmd, 'the base model (while checking the runs)').action(async (o: { run: string[]; peft: string[]; model?: string; out: string }) => {
      const quantize = quantizeFrom(parseOptions(tableQuantizeSchema, o));
      const runs = o.run.map((s) => namedDir(s, '--run'));
      const pefts = o.peft.map((s) => namedDir(s, '--peft'));
      if (runs.length + pefts.length === 0) throw new UserError('give at least one --run NAME=RUNDIR or --peft NAME=DIR');
      const names = [...runs, ...pefts].map((r) => r.name);
      const dup = names.find((n, i) => names.indexOf(n) !== i);
      if (dup) throw new UserError(`task "${dup}" given twice`);
      const model = o.model ?? (runs[0] ? runModel(runs[0].dir) : undefined);
      if (!model) throw new UserError('give --model (the base model of the adapters)');
      await initEngine();
      const lm = await loadModel(model, { quantize });
      const table = PromptTable.create(lm);
      table.model = model;
      for (const r of runs) await table.addRun(r.name, r.dir, { replace: false });
      for (const p of pefts) await table.addPeft(p.name, p.dir, { replace: false });
      table.save(o.out);
      console.log(JSON.stringify({ table: o.out, model, tasks: table.list().map((t) => ({ name: t.name, head: t.head, virtualTokens: t.virtualTokens })) }));
      lm.dispose();
    });

  const serve = program
    .command('serve')
    .description('serve tuned prompts over HTTP: one frozen LM, many tasks, mixed-task batches, generation')
    .option('--model <dir>', 'the base model (default: the table\'s, or the one the first run names)')
    .option('--run <name=dir>', 'a task: its name and run directory (repeatable)', collect, [] as string[])
    .option('--table <dir>', 'a prompt table written by ptune table')
    .option('--host <addr>', 'address to bind', '127.0.0.1')
    .option('--port <n>', 'port (0: any free one)', asText, 8080)
    .option('--max-batch <n>', 'rows per forward', asText, 32)
    .option('--max-wait-ms <n>', 'how long a row waits for others to batch with', asText, 5)
    .option('--max-queue <n>', 'rows waiting before requests are refused (429)', asText, 1024)
    .option('--timeout-ms <n>', 'request timeout (504)', asText, 30_000)
    .option('--body-limit <bytes>', 'largest request body (413)', asText, 1 << 20);
  addQuantizeOptions(serve, 'the served LM').action(async (raw: Record<string, unknown>) => {
      const o = parseOptions(serveSchema, raw);
      const quantize = quantizeFrom(o);
      const runs = o.run.map((s) => namedDir(s, '--run'));
      const model = o.model ?? (o.table ? PromptTable.modelOf(o.table) : runs[0] ? runModel(runs[0].dir) : undefined);
      if (!model) throw new UserError('give --model, --table or --run');
      const threads = process.env.PTUNE_THREADS ? Number(process.env.PTUNE_THREADS) : undefined;
      const server = await createServer({
        model,
        table: o.table,
        runs: runs.map((r) => ({ name: r.name, run: r.dir })),
        host: o.host,
        port: o.port,
        maxBatch: o.maxBatch,
        maxWaitMs: o.maxWaitMs,
        maxQueue: o.maxQueue,
        timeoutMs: o.timeoutMs,
        bodyLimit: o.bodyLimit,
        threads,
        ...(quantize && { quantize }),
      });
      const url = await server.listen();
      process.stdout.write(`${JSON.stringify({ listening: url, model, tasks: server.tasks().map((t) => t.name) })}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.stderr.write('ptune serve: draining (no new connections; finishing the requests in flight)\n');
          void server.close().then(resolve);
        };
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
    });
}
