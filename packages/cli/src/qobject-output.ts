/**
 * qemu's QObject printers, byte for byte as qemu 7.2 prints them: pretty JSON
 * (qobject_to_json_pretty, with to_json_str's escaping) and the human tree of dump_qobject.
 * Shared by the info and check reports. The QDict key order, the string escaping and the
 * one-line form live in @tsimg/image (qobject-json.ts), which names nodes by json: filenames.
 */
import { jsonString, qdictEntries as dictEntries, isQDict as isDict, type QValue, qscalarText as scalarText } from '@tsimg/image';

export { jsonString, qdictOrder, type QValue, tdbHash, toQemuJsonLine } from '@tsimg/image';

/** qobject_to_json_pretty: 4-space indentation, ": " between key and value, QDict key order. */
export function toQemuJson(v: QValue, indent = 0): string {
  const nl = (level: number): string => '\n' + ' '.repeat(level * 4);
  if (Array.isArray(v)) {
    let s = '[';
    v.forEach((e, i) => {
      s += (i > 0 ? ',' : '') + nl(indent + 1) + toQemuJson(e, indent + 1);
    });
    return s + nl(indent) + ']';
  }
  if (isDict(v)) {
    let s = '{';
    dictEntries(v).forEach(([k, e], i) => {
      s += (i > 0 ? ',' : '') + nl(indent + 1) + jsonString(k) + ': ' + toQemuJson(e, indent + 1);
    });
    return s + nl(indent) + '}';
  }
  if (typeof v === 'string') return jsonString(v);
  return scalarText(v as number | bigint | boolean);
}

/** dump_qobject: the "Format specific information" tree (keys with '-' shown as ' '). */
export function dumpQObject(v: QValue, indent: number): string {
  if (Array.isArray(v)) {
    let s = '';
    v.forEach((e: QValue, i: number) => {
      const composite = typeof e === 'object';
      s += `${' '.repeat(indent * 4)}[${i}]:${composite ? '\n' : ' '}${dumpQObject(e, indent + 1)}${composite ? '' : '\n'}`;
    });
    return s;
  }
  if (isDict(v)) {
    let s = '';
    for (const [k, e] of dictEntries(v)) {
      const composite = typeof e === 'object';
      s += `${' '.repeat(indent * 4)}${k.replaceAll('-', ' ')}:${composite ? '\n' : ' '}${dumpQObject(e, indent + 1)}${composite ? '' : '\n'}`;
    }
    return s;
  }
  return scalarText(v as string | number | bigint | boolean);
}
