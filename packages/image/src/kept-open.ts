/** A view of a device whose close does nothing: for an open that must leave the device to its owner. */
import type { BlockDevice } from '@tsimg/raw';

/** `device` with a `close` that returns at once; every other member is the device's own. */
export function keptOpen(device: BlockDevice): BlockDevice {
  return new Proxy(device, {
    get: (target, prop) => {
      if (prop === 'close') return async () => undefined;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
