/**
 * Nullspace: gVisor machines created in a fraction of a second, that run
 * commands, hold files, hibernate with their memory, wake on a request to
 * their public URL, and fork. No runtime dependencies: global fetch, web
 * streams, AbortController (Node 20+, browsers).
 */
export * from "./errors.js";
export * from "./models.js";
export { Client, Snapshots, Templates, Volumes } from "./client.js";
export type { BuildTemplateOptions, ClientOptions, Tarball } from "./client.js";
export { CommandHandle, Commands, DEFAULT_SHELL, Files, KeepAlive, Machine, Pty, PtyHandle, WatchHandle } from "./machine.js";
export type { ConnectionOptions, CreateOptions, IdempotentOptions, PtyCreateOptions, ReadFormat, RunOptions } from "./machine.js";
export { DEFAULT_REQUEST_TIMEOUT, VERSION } from "./http.js";
export type { CallOptions } from "./http.js";
