import { splitImageOpts } from './image-opts.js';

/** The warning qemu's raw format prints when a probed raw image is opened for writing. */

/** raw_open's text for image `filename` (printed as is, without the program name). */
export function probedRawWarning(filename: string): string {
  return (
    `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
    '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
    "         Specify the 'raw' format explicitly to remove the restrictions.\n"
  );
}

/**
 * Whether a command's image was opened with its format probed and found raw — qemu then warns
 * (with {@link probedRawWarning}) when it opens the image for writing. With --image-opts the
 * format is probed when the options name no driver.
 */
export function probedRaw(image: { format: string }, named: { filename: string; format?: string; imageOpts?: boolean }): boolean {
  const probed = named.imageOpts ? !splitImageOpts(named.filename).has('driver') : named.format === undefined;
  return probed && image.format === 'raw';
}
