/**
 * node:fs/promises in the browser build: the image layer only asks it for canonical names
 * (realpath, where failing means "use the name as it is") and for host files, which a page has
 * none of.
 */
const none = async (): Promise<never> => {
  throw Object.assign(new Error('no host file system in a browser'), { code: 'ENOSYS' });
};
export const realpath = none;
export const stat = none;
export const rm = none;
