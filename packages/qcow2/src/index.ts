/** @tsimg/qcow2 — the qcow2 image format. */
export {};
