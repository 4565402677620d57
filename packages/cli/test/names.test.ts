/**
 * Image names as qemu parses them: a colon before the first '/' is a protocol prefix
 * ("Unknown protocol 'image'"), `file:` strips to the path (with "./" put back when the rest
 * would read as a protocol), `json:` names block options — for the image itself and for the
 * backing files found through it, in every command that opens images.
 */
import { afterAll, beforeAll, it } from 'vitest';
import { describeQemu, expectSameAsQemu, qemuImg, tempDir } from '../../../test-images/qemu.js';

describeQemu('image names with protocol prefixes and colons', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-names-');
    const make = (args: string[]) => qemuImg(args, { cwd: work.dir });
    make(['create', '-q', '-f', 'qcow2', './image:base.qcow2', '1M']);
    make(['create', '-q', '-f', 'qcow2', '-b', './image:base.qcow2', '-F', 'qcow2', './image:top.qcow2', '1M']);
    make(['create', '-q', '-f', 'qcow2', '-b', 'image:base.qcow2', '-F', 'qcow2', './image:bad.qcow2', '1M']);
  });
  afterAll(() => work.cleanup());

  const json = JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: './image:top.qcow2' } });
  const names = ['image:top.qcow2', 'file:image:top.qcow2', 'file:./image:top.qcow2', './image:top.qcow2', './image:bad.qcow2', 'nosuch:x', `json:${json}`];
  const commands: ((n: string) => string[])[] = [
    (n) => ['info', n],
    (n) => ['info', '--backing-chain', '--output=json', n],
    (n) => ['map', '--output=json', n],
    (n) => ['check', n],
    (n) => ['compare', n, './image:top.qcow2'],
    (n) => ['measure', '-O', 'qcow2', n],
    (n) => ['convert', '-O', 'raw', n, 'out.raw'],
  ];
  // --image-opts names the file literally: "image:top.qcow2" is a file name there, and only
  // the backing name found through it is parsed (and fails as a protocol, as in qemu).
  it('--image-opts file.filename with a colon', () => {
    for (const file of ['image:top.qcow2', './image:top.qcow2']) {
      const opts = `driver=qcow2,file.filename=${file}`;
      for (const args of [['info', '--image-opts', opts], ['map', '--image-opts', opts], ['check', '--image-opts', opts], ['convert', '--image-opts', opts, 'out.raw']]) {
        expectSameAsQemu(args, work.dir);
      }
    }
  });

  for (const name of names) {
    it(name, () => {
      for (const args of commands.map((c) => c(name))) expectSameAsQemu(args, work.dir);
    });
  }
});
