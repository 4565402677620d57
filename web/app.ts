/**
 * The tsimg page: opens an image from local files (the first picked file is the image, the
 * others are its backing files, by name) or from a URL, and shows what `qemu-img info` shows,
 * the snapshots, a picture of the cluster map (and its `map --output=json` text), and offers the
 * image converted to raw or qcow2 for download (written into the origin private file system
 * where the browser has one, then offered from there). Everything runs in the page.
 */
import { formatImageInfoHuman } from '../packages/cli/src/info-output.js';
import {
  BlobDevice, type BlockDevice, collectImageInfo, convertCopy, createQcow2, type FileResolver, type Image, type ImageInfo, type MapEntry, mapImage, MemoryDevice,
  OpfsDevice, openImage, UnsupportedError,
} from './lib.js';

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

/** What is open: the name, how files are found, and the image. */
let current: { name: string; files?: FileResolver; image: Image } | undefined;

function setStatus(text: string): void {
  $('status').textContent = text;
}

/** `map --output=json`'s line for one entry. */
function jsonEntry(e: MapEntry): string {
  let s = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return `${s}}`;
}

function showSnapshots(info: ImageInfo): void {
  const body = $('snapshots').querySelector('tbody')!;
  body.replaceChildren();
  for (const sn of info.snapshots ?? []) {
    const row = document.createElement('tr');
    const date = new Date(sn['date-sec'] * 1000).toISOString().replace('T', ' ').slice(0, 19);
    for (const cell of [sn.id, sn.name, String(sn['vm-state-size']), date, String(sn['icount'] ?? '')]) {
      const td = document.createElement('td');
      td.textContent = cell;
      row.append(td);
    }
    body.append(row);
  }
}

/** One cell per `size / cells` bytes: data green (darker below the top), zeroes grey, holes white. */
function drawMap(entries: MapEntry[], size: number): void {
  const canvas = $<HTMLCanvasElement>('map');
  const ctx = canvas.getContext('2d')!;
  const cols = 128;
  const rows = canvas.height / (canvas.width / cols);
  const cell = canvas.width / cols;
  const per = Math.max(1, size / (cols * rows));
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (const e of entries) {
    if (!e.data && !e.zero) continue;
    ctx.fillStyle = e.data ? (e.depth === 0 ? '#2a9d4a' : '#8fd19e') : '#ccc';
    for (let i = Math.floor(e.start / per); i < Math.ceil((e.start + e.length) / per); i++) {
      ctx.fillRect((i % cols) * cell, Math.floor(i / cols) * cell, cell - 1, cell - 1);
    }
  }
}

async function open(name: string, files?: FileResolver): Promise<void> {
  setStatus('opening');
  $('error').textContent = '';
  try {
    await current?.image.close();
    current = undefined;
    const { info } = await collectImageInfo(name, { files });
    $('info').textContent = formatImageInfoHuman(info);
    showSnapshots(info);
    const image = await openImage(name, { files });
    current = { name, files, image };
    const entries: MapEntry[] = [];
    for await (const e of mapImage(image)) entries.push({ ...e });
    $('map-json').textContent = `[${entries.map(jsonEntry).join(',\n')}]\n`;
    drawMap(entries, image.size());
    setStatus('ready');
  } catch (err) {
    $('error').textContent = `tsimg: ${(err as Error).message}`;
    setStatus('failed');
  }
}

/**
 * Where a converted image is written: a file of the origin private file system where the
 * browser has one (written through OpfsDevice, so the image is never held in memory), else memory.
 */
async function conversionTarget(name: string): Promise<{ dev: BlockDevice; where: string; result: () => Promise<Blob> }> {
  try {
    const dev = await OpfsDevice.open(name, { truncate: true });
    return { dev, where: `OPFS ${name}`, result: () => dev.file() };
  } catch (err) {
    if (!(err instanceof UnsupportedError)) throw err;
    const mem = new MemoryDevice();
    return { dev: mem, where: 'memory', result: async () => new Blob([mem.contents()]) };
  }
}

/** The open image converted as `qemu-img convert -O <format>` would write it, as a Blob. */
async function converted(format: 'raw' | 'qcow2'): Promise<Blob> {
  const source = current!.image;
  const size = Math.ceil(source.size() / 512) * 512;
  const name = `converted.${format}`;
  const { dev, where, result } = await conversionTarget(name);
  if (format === 'raw') {
    await dev.resize(size);
    await convertCopy([source], dev, { minSparse: 4096, hasZeroInit: true, clusterSize: 0 });
    await dev.close();
  } else {
    await createQcow2(dev, { size: BigInt(size) });
    const target = await openImage(name, { files: (n) => (n === name ? dev : undefined), format: 'qcow2', readOnly: false, unmap: true });
    await convertCopy([source], target, { minSparse: 4096, hasZeroInit: true, clusterSize: target.clusterSize ?? 0 });
    await target.close();
  }
  $('saved').textContent = where;
  return result();
}

async function download(format: 'raw' | 'qcow2'): Promise<void> {
  if (current === undefined) return;
  setStatus(`converting to ${format}`);
  try {
    const blob = await converted(format);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${current.name.replace(/^.*\//, '').replace(/\.[^.]*$/, '')}.${format}`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    setStatus('ready');
  } catch (err) {
    $('error').textContent = `tsimg: ${(err as Error).message}`;
    setStatus('failed');
  }
}

$<HTMLInputElement>('file').addEventListener('change', (ev) => {
  const picked = [...((ev.target as HTMLInputElement).files ?? [])];
  if (picked.length === 0) return;
  const byName = new Map(picked.map((f) => [f.name, f]));
  // Backing names are resolved like paths ("dir/base.qcow2"): the last part names a picked file.
  const files: FileResolver = (n) => {
    const f = byName.get(n.replace(/^.*\//, ''));
    return f === undefined ? undefined : new BlobDevice(f);
  };
  void open(picked[0]!.name, files);
});
$('open-url').addEventListener('click', () => void open($<HTMLInputElement>('url').value.trim()));
$('download-raw').addEventListener('click', () => void download('raw'));
$('download-qcow2').addEventListener('click', () => void download('qcow2'));
setStatus('idle');
