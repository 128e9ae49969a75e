// A small program written as users write them, type-checked (never run)
// against the built declarations, resolved through package.json "exports"
// (the "import" condition: dist/esm). `npm run typecheck-consumer`.
import {
  Client, CommandHandle, CommandResult, EntryInfo, FileEvent, KeepAlive, Lease, Machine, MachineInfo, MachineNotFoundError, MachineURL, Metric,
  NullspaceError, OutputChunk, PtyHandle, Snapshot, Tarball, Template, WatchHandle,
} from "nullspace";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const is = <T extends true>(): T => true as T;

export async function main(): Promise<void> {
  await using machine = await Machine.create({ template: "base", timeout: 600, onTimeout: "pause", autoResume: true });
  const snap: Snapshot = await machine.pause();
  const resumed: Machine = await Machine.connect(machine.id);
  const info: MachineInfo = await Machine.getInfoById(machine.id);
  is<Equal<typeof info.timeoutAt, Date | undefined>>();
  const lease: Lease = await resumed.setTimeout(120, { timeoutAction: "hibernate" });
  // Files kept, memory dropped at the lease's end, and the same on refresh.
  await using stopping = await Machine.create({ template: "base", timeout: 60, onTimeout: "stop" });
  await stopping.setTimeout(60, { timeoutAction: "stop" });
  // A key of the caller's makes a create safe to retry across restarts.
  await using keyed = await Machine.create({ template: "base", idempotencyKey: "job-42" });
  const kids: Machine[] = await keyed.fork(2, { idempotencyKey: "job-42-fork", requestTimeout: 120 });
  const warm: Snapshot = await keyed.createSnapshot({ name: "warm", idempotencyKey: "job-42-snap" });
  void kids;
  void warm;
  is<Equal<typeof lease.remainingMs, number>>();
  const text = await resumed.files.read("/workspace/report.txt");
  is<Equal<typeof text, string>>();
  const bytes = await resumed.files.read("/x", { format: "bytes" });
  is<Equal<typeof bytes, Uint8Array>>();
  const stream = await resumed.files.read("/x", { format: "stream" });
  is<Equal<typeof stream, ReadableStream<Uint8Array>>>();
  const r = await resumed.commands.run("echo hi", { shell: true });
  is<Equal<typeof r, CommandResult>>();
  const h = await resumed.commands.run("sleep 1", { background: true, signal: AbortSignal.timeout(5000) });
  is<Equal<typeof h, CommandHandle>>();
  for await (const chunk of h) is<Equal<typeof chunk, OutputChunk>>();
  {
    await using ka = await resumed.keepAlive({ timeoutSecs: 300 });
    is<Equal<typeof ka, KeepAlive>>();
  }
  for await (const metric of resumed.monitor()) is<Equal<typeof metric, Metric>>();
  for await (const m of Machine.list({ state: "running", metadata: { user: "42" } })) is<Equal<typeof m, MachineInfo>>();
  const t = await resumed.pty.create({ size: { rows: 30, cols: 100 }, onData: (b) => is<Equal<typeof b, Uint8Array>>() && undefined });
  is<Equal<typeof t, PtyHandle>>();
  await t.sendStdin(new Uint8Array([3]));
  await t.resize({ rows: 40, cols: 120 });
  {
    await using w = await resumed.files.watchDir("/workspace", { recursive: true });
    is<Equal<typeof w, WatchHandle>>();
    for await (const ev of w) is<Equal<typeof ev, FileEvent>>();
    const polled: FileEvent[] = await w.getNewEvents();
    void polled;
  }
  const entries: EntryInfo[] = await resumed.files.list("/workspace");
  is<Equal<(typeof entries)[number]["owner"], string>>();
  const client = new Client();
  const built: Template = await client.templates.build("mine", { tarball: new Blob([]), steps: ["true"] });
  await client.templates.build("mine", { tarball: "rootfs.tar.gz", requestTimeout: null });
  const tarball: Tarball = new ReadableStream<Uint8Array>();
  await client.templates.build("mine", { tarball });
  const url: MachineURL = await resumed.getUrl(8080);
  void [snap, url, built];
  try {
    await Machine.kill("mch_...");
  } catch (e) {
    if (e instanceof MachineNotFoundError) is<Equal<typeof e.code, string>>();
    if (e instanceof NullspaceError) is<Equal<typeof e.retryable, boolean>>();
  }
}
