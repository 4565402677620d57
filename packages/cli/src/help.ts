/**
 * `tsimg --help`: the standard options, the synopsis of every command tsimg has (in the
 * grammar qemu-img 7.2's help prints, so a qemu-img user reads the same lines), what the
 * parameters mean, and the formats tsimg reads and writes.
 */

/** Each qemu-img subcommand's synopsis (the command-line grammar), in qemu-img's help order. */
const SYNOPSES: Readonly<Record<string, string>> = {
  amend: 'amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename',
  bench:
    'bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] ' +
    '[--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename',
  bitmap:
    'bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] ' +
    '[-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap',
  check: 'check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename',
  checksum: 'checksum [--object objectdef] [--image-opts] [-f fmt] [-T src_cache] [-p] [--progress=json] [-U] filename',
  commit: 'commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename',
  compare: 'compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2',
  convert:
    'convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] ' +
    '[-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] ' +
    '[-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename',
  create: 'create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]',
  dd: 'dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output',
  info: 'info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename',
  map: 'map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename',
  measure:
    'measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] ' +
    '[-l snapshot_param] filename]',
  snapshot: 'snapshot [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-l | -a snapshot | -c snapshot | -d snapshot] filename',
  rebase:
    'rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-c] ' +
    '-b backing_file [-F backing_fmt] filename',
  resize: 'resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size',
};

const PARAMETERS = `Parameters:
  'filename'         a disk image file
  'fmt'              an image format; probed when absent (qcow2 by its magic, else raw)
  'objectdef'        a --object definition (e.g. a secret holding a key)
  'cache', 'src_cache'  cache mode for writing / reading: none, writeback, writethrough,
                     directsync or unsafe
  'size'             bytes, with an optional suffix k, M, G, T, P or E (powers of 1024)
  'output_filename'  the image to write; 'output_fmt' its format; '-' or a pipe: written
                     forward (raw, qcow2), and a source '-' is read from standard input
  'options'          format options as name=value,...; '-o help' lists them
  'snapshot_param'   'snapshot.id=ID,snapshot.name=NAME' or 'ID_OR_NAME'
  -c  compress what is written (qcow2)      -p  show progress
  --progress=json  progress as JSON lines on stderr (done, total, percent, rate)
  -q  quiet: print only errors              -u  do not open or check backing files
  -n  write into an existing target (convert)
  -S  the run of zero bytes (default 4k) convert leaves sparse; 0 allocates everything
  --output  human (default) or json
  -h  with or without a command: this help
`;

/** The help text, listing the commands of `commands` (those tsimg has) in qemu-img's order. */
export function helpText(commands: readonly string[], version: string): string {
  const have = new Set(commands);
  const lines = Object.keys(SYNOPSES)
    .filter((name) => have.has(name))
    .map((name) => `  ${SYNOPSES[name]}\n`);
  for (const name of [...have].sort()) if (!(name in SYNOPSES)) lines.push(`  ${name}\n`);
  return (
    `${version}\n` +
    'usage: tsimg [standard options] command [command options]\n' +
    'Disk image utility: qemu-img 7.2, in TypeScript\n\n' +
    "    '-h', '--help'       this help\n" +
    "    '-V', '--version'    the version\n" +
    "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n" +
    '                         tracing options (accepted; tsimg has no trace events)\n\n' +
    'Command syntax:\n' +
    lines.join('') +
    '\n' +
    PARAMETERS +
    '\nSupported formats: qcow2 raw\n'
  );
}
