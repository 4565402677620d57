/**
 * The creation options of each format tsimg creates — file-posix's, raw's and qcow2's, in qemu
 * 7.2's order and with its help texts — and qemu-img's print_block_option_help over them
 * (`-o help` of create and convert; measure parses its `-o` against the same lists).
 */
import type { CliIO } from './command.js';
import { protocolPath } from './image-create.js';
import { mergeOptDescs, optionHelpLines, type OptDesc } from './options.js';
import { uncreatableFormatMessage } from './qemu-formats.js';

/** file-posix's creation options (the protocol layer every format here sits on). */
export const FILE_OPTS: readonly OptDesc[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
];

/** raw's creation options. */
export const RAW_OPTS: readonly OptDesc[] = [{ name: 'size', type: 'size', help: 'Virtual disk size' }];

/** The LUKS cipher and PBKDF options (block/crypto.h BLOCK_CRYPTO_OPT_DEF_LUKS_*), shared by luks and qcow2 (`encrypt.`). */
const LUKS_CIPHER_OPTS: readonly OptDesc[] = [
  { name: 'cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
];

/** qcow2_create_opts in qemu 7.2's order (the order of the "Formatting" line). */
export const QCOW2_OPTS: readonly OptDesc[] = [
  { name: 'encryption', type: 'bool', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes', 'luks'" },
  { name: 'encrypt.key-secret', type: 'string', help: 'ID of secret providing qcow AES key or LUKS passphrase' },
  ...LUKS_CIPHER_OPTS.map((d) => ({ ...d, name: `encrypt.${d.name}` })),
  { name: 'cluster_size', type: 'size', help: 'qcow2 cluster size', defaultValue: '65536' },
  { name: 'extended_l2', type: 'bool', help: 'Extended L2 tables', defaultValue: 'off' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)' },
  { name: 'compression_type', type: 'string', help: 'Compression method used for image cluster compression', defaultValue: 'zlib' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates', defaultValue: 'off' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits', defaultValue: '16' },
];

/** block_crypto_create_opts_luks in qemu 7.2's order. */
export const LUKS_OPTS: readonly OptDesc[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'key-secret', type: 'string', help: 'ID of the secret that provides the keyslot passphrase' },
  ...LUKS_CIPHER_OPTS,
];

/** The creation options of each format tsimg creates, by `-f` / `-O` name. */
export const FORMAT_OPTS: Readonly<Record<string, readonly OptDesc[]>> = { raw: RAW_OPTS, qcow2: QCOW2_OPTS, luks: LUKS_OPTS, file: FILE_OPTS };

/** qemu-img's print_block_option_help. */
export function printOptionHelp(io: CliIO, filename: string | undefined, fmt: string): number {
  const descs = FORMAT_OPTS[fmt];
  if (!descs) {
    io.stderr(`tsimg: ${uncreatableFormatMessage(fmt)}\n`);
    return 1;
  }
  if (filename !== undefined) {
    protocolPath(filename);
    io.stdout(`Supported options:\n${optionHelpLines(mergeOptDescs(descs, FILE_OPTS))}`);
  } else {
    io.stdout(
      `Supported ${fmt} options:\n${optionHelpLines(descs)}\n` +
        'The protocol level may support further options.\n' +
        'Specify the target filename to include those options.\n',
    );
  }
  return 0;
}
