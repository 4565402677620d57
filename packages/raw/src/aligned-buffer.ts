/**
 * Page-aligned data buffers, for the big reused buffers of the copy loops (convert, compare,
 * commit, rebase, bench) and read-ahead.
 *
 * Why: a large `ArrayBuffer` comes from malloc, whose big chunks start 16 bytes past a page,
 * and the kernel copies into or out of a destination that is not 64-byte aligned far more
 * slowly. Measured on this machine kind (Node 20, 512 MiB cached file read in 2 MiB preads):
 * 350–800 ms into `new Uint8Array(2 MiB)`, 58–140 ms into a page-aligned buffer. The memory of
 * a `WebAssembly.Memory` is page-aligned by construction (it is mmapped), so no native code is
 * needed, in Node or in a browser.
 *
 * Each such memory reserves a large range of address space (V8 keeps guard regions: ~10 GiB
 * virtual, nothing resident), so these buffers are for long-lived, reused buffers — a handful
 * per command — never per request. Small buffers gain nothing and stay ordinary.
 */

/** Below this size an ordinary buffer is returned (alignment matters for big copies only). */
const ALIGNED_MIN = 64 * 1024;
const WASM_PAGE = 64 * 1024;
/** The most pages a WebAssembly.Memory may have (4 GiB). */
const WASM_MAX_PAGES = 65536;

/** The one WebAssembly call used, typed here: the packages build without the DOM library. */
type WasmMemory = new (descriptor: { initial: number }) => { readonly buffer: ArrayBuffer };
const Memory = (globalThis as { WebAssembly?: { Memory: WasmMemory } }).WebAssembly?.Memory;

/**
 * A zero-filled buffer of `length` bytes whose first byte is page-aligned when `length` is at
 * least 64 KiB (an ordinary `Uint8Array` below that, or where WebAssembly is missing).
 */
export function alignedBuffer(length: number): Uint8Array {
  const pages = Math.ceil(length / WASM_PAGE);
  if (length < ALIGNED_MIN || pages > WASM_MAX_PAGES || Memory === undefined) return new Uint8Array(length);
  try {
    return new Uint8Array(new Memory({ initial: pages }).buffer, 0, length);
  } catch {
    // Out of address space (or a host that forbids wasm memories): correctness over speed.
    return new Uint8Array(length);
  }
}
