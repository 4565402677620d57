/**
 * qemu-img check's two report forms, as qemu 7.2 prints them (qemu-img.c dump_human_image_check
 * and dump_json_image_check over the QAPI ImageCheck struct), and the repair summary.
 */
import type { CheckResult } from '@tsimg/qcow2';
import { toQemuJson, type QValue } from './qobject-output.js';

/** qemu's ImageCheck: the result plus the names, and the fixed counts carried over a re-check. */
export interface ImageCheckReport {
  filename: string;
  format: string;
  result: CheckResult;
}

/**
 * printf("%0.2f", x) as glibc does it: the exact binary value rounded half-to-even at the
 * second decimal (Number#toFixed rounds exact ties up, e.g. 0.125 → "0.13" where glibc
 * prints "0.12").
 */
export function printf2(x: number): string {
  const exact = x.toFixed(100); // exact decimal expansion of the double (finite, < 1e21)
  const dot = exact.indexOf('.');
  const intPart = exact.slice(0, dot);
  const frac = exact.slice(dot + 1);
  const rest = frac.slice(2);
  const tie = /^50*$/.test(rest);
  if (!tie) return x.toFixed(2);
  const last = Number(frac[1]);
  if (last % 2 === 0) return `${intPart}.${frac.slice(0, 2)}`;
  return x.toFixed(2); // odd digit: rounding up is to-even
}

/** dump_human_image_check. */
export function formatCheckHuman(r: CheckResult): string {
  let s = '';
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    s += 'No errors were found on the image.\n';
  } else {
    if (r.corruptions) {
      s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (r.leaks) {
      s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (r.checkErrors) {
      s += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
    }
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    s +=
      `${r.allocatedClusters}/${r.totalClusters} = ${printf2((r.allocatedClusters * 100) / r.totalClusters)}% allocated, ` +
      `${printf2((r.fragmentedClusters * 100) / r.allocatedClusters)}% fragmented, ` +
      `${printf2((r.compressedClusters * 100) / r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) s += `Image end offset: ${r.imageEndOffset}\n`;
  return s;
}

/** dump_json_image_check: the ImageCheck object, optional members only when non-zero. */
export function formatCheckJson(report: ImageCheckReport): string {
  const r = report.result;
  const opt = (n: number): number | undefined => (n !== 0 ? n : undefined);
  // Schema order (qapi/block-core.json ImageCheck); toQemuJson applies qemu's QDict order.
  const obj: { [key: string]: QValue | undefined } = {
    filename: report.filename,
    format: report.format,
    'check-errors': r.checkErrors,
    'image-end-offset': opt(r.imageEndOffset),
    corruptions: opt(r.corruptions),
    leaks: opt(r.leaks),
    'corruptions-fixed': opt(r.corruptionsFixed),
    'leaks-fixed': opt(r.leaksFixed),
    'total-clusters': opt(r.totalClusters),
    'allocated-clusters': opt(r.allocatedClusters),
    'fragmented-clusters': opt(r.fragmentedClusters),
    'compressed-clusters': opt(r.compressedClusters),
  };
  return `${toQemuJson(obj)}\n`;
}

/** The summary img_check prints after a repair, before checking again. */
export function formatRepairSummary(leaksFixed: number, corruptionsFixed: number): string {
  return (
    'The following inconsistencies were found and repaired:\n\n' +
    `    ${leaksFixed} leaked clusters\n` +
    `    ${corruptionsFixed} corruptions\n\n` +
    'Double checking the fixed image now...\n'
  );
}
