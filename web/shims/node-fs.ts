/**
 * node:fs in the browser build, for the image layer's canonical names only (fs.promises.realpath,
 * where failing means "use the name as it is"); a page has no host files.
 */
import * as promises from './node-fs-promises.js';

export default { promises };
export { promises };
