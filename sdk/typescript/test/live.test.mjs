// The TypeScript SDK against a live server with real gVisor machines
// (e2e TestTypeScriptSDK starts it and passes NULLSPACE_API_URL/KEY). The
// same tests run against the ESM build and the CJS build:
// NULLSPACE_SDK_BUILD=esm|cjs picks which one is loaded.

import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";

const build = process.env.NULLSPACE_SDK_BUILD ?? "esm";
const sdk = build === "cjs"
  ? createRequire(import.meta.url)("../dist/cjs/index.js")
  : await import("../dist/esm/index.js");
const { Machine, Client, errors } = { ...sdk, errors: sdk };

if (!process.env.NULLSPACE_API_URL) {
  throw new Error("NULLSPACE_API_URL is not set: run these tests with `make test` (e2e TestTypeScriptSDK), or point it at a running `nullspace serve`");
}

const made = [];
async function machine(o = {}) {
  const m = await Machine.create({ template: "base", ...o });
  made.push(m.id);
  return m;
}

async function eventually(what, f, timeoutMs = 30_000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms (last error: ${last})`);
}

after(async () => {
  for (const id of made) await Machine.kill(id).catch(() => undefined);
});

describe(`nullspace (${build} build)`, () => {
  before(async () => {
    const h = await new Client().health();
    assert.equal(h.ok, true);
  });

  test("pause, connect, paused alias, resume", async () => {
    const m = await machine({ timeout: 600, onTimeout: "pause", autoResume: true });
    const info = await m.getInfo();
    assert.equal(info.onTimeout, "pause");
    assert.equal(info.autoResume, true);
    await m.files.write("/workspace/report.txt", "draft\n");
    const snap = await m.pause();
    assert.equal(snap.kind, "hibernate");
    const alias = await Machine.getInfoById(m.id);
    assert.equal(alias.status, "paused");
    assert.equal(alias.snapshotId, snap.id);
    const resumed = await Machine.connect(m.id);
    made.push(resumed.id);
    assert.notEqual(resumed.id, m.id);
    assert.equal((await Machine.getInfoById(m.id)).latestId, resumed.id);
    assert.equal(await resumed.files.read("/workspace/report.txt"), "draft\n");
    // A handle on the paused alias reaches the latest execution.
    assert.equal(await m.files.read("/workspace/report.txt"), "draft\n");
    // An older state is refused, the lineage has moved on.
    await resumed.pause();
    await assert.rejects(Machine.resume(snap.id), errors.SnapshotSupersededError);
  });

  test("snapshots and children, fork, checkpoints", async () => {
    const m = await machine();
    await m.files.write("/workspace/state.txt", "v1");
    const snap = await m.createSnapshot();
    assert.equal(snap.kind, "snapshot");
    const a = await Machine.create({ snapshotId: snap.id });
    const b = await Machine.create({ snapshotId: snap.id });
    made.push(a.id, b.id);
    assert.equal(await a.files.read("/workspace/state.txt"), "v1");
    assert.equal(await b.files.read("/workspace/state.txt"), "v1");
    const kids = await m.fork(2);
    made.push(...kids.map((k) => k.id));
    assert.equal(new Set(kids.map((k) => k.id)).size, 2);
    const cp = await m.checkpoint();
    await m.files.write("/workspace/state.txt", "v2");
    assert.ok((await m.checkpoints()).some((s) => s.id === cp.id));
    await m.restoreCheckpoint(cp.id);
    assert.equal(await m.files.read("/workspace/state.txt"), "v1");
    const c = new Client();
    assert.equal((await c.snapshots.get(snap.id)).lineageId, m.id);
    await assert.rejects(c.snapshots.delete(snap.id), errors.ConflictError); // children are live
    await a.kill();
    await b.kill();
    await c.snapshots.delete(snap.id);
    await assert.rejects(c.snapshots.get(snap.id), errors.SnapshotNotFoundError);
  });

  test("leases and keepAlive", async () => {
    const m = await machine({ timeout: 3 });
    const lease = await m.setTimeout(30, { timeoutAction: "hibernate" });
    assert.equal(lease.timeoutMs, 30_000);
    assert.equal(lease.timeoutAction, "hibernate");
    assert.ok(lease.remainingMs > 25_000 && lease.remainingMs <= 30_000);
    assert.ok(lease.timeoutAt instanceof Date);
    await m.setTimeout(3, { timeoutAction: "destroy" });
    // `await using ka = ...` in TypeScript; Node 20's JavaScript has no
    // `using` yet, so the dispose is called by hand.
    const ka = await m.keepAlive({ timeoutSecs: 3 });
    try {
      await new Promise((r) => setTimeout(r, 10_000));
      assert.equal((await m.getInfo()).status, "running");
      assert.ok(ka.refreshes >= 5, `refreshes ${ka.refreshes}`);
    } finally {
      await ka[Symbol.asyncDispose]();
    }
    await eventually("the lease ends the machine", async () => (await m.getInfo()).status === "killed");
    // A refresh that cannot succeed is surfaced by stop().
    const m2 = await machine({ timeout: 30 });
    const ka2 = await m2.keepAlive({ timeoutSecs: 4, refreshEverySecs: 0.5 });
    await m2.kill();
    await new Promise((r) => setTimeout(r, 2000));
    await assert.rejects(ka2.stop(), errors.KeepAliveError);
    await assert.rejects(m2.keepAlive({ timeoutSecs: 2, refreshEverySecs: 5 }), errors.InvalidArgumentError);
  });

  test("files in all formats, a streamed upload", async () => {
    const m = await machine();
    assert.equal((await m.files.write("/workspace/a/b.txt", "h\u00e9llo\n")).size, 7);
    assert.equal(await m.files.read("/workspace/a/b.txt"), "h\u00e9llo\n");
    const bin = Uint8Array.from({ length: 256 }, (_, i) => i);
    await m.files.write("/workspace/bin.dat", bin, { mode: 0o600 });
    assert.deepEqual(await m.files.read("/workspace/bin.dat", { format: "bytes" }), bin);
    const st = await m.files.stat("/workspace/bin.dat");
    assert.deepEqual([st.name, st.type, st.size, st.mode], ["bin.dat", "file", 256, "0600"]);
    const stream = await m.files.read("/workspace/bin.dat", { format: "stream" });
    const parts = [];
    for await (const p of stream) parts.push(...p);
    assert.deepEqual(Uint8Array.from(parts), bin);
    await m.files.write("/workspace/blob.txt", new Blob(["from a blob"]));
    assert.equal(await m.files.read("/workspace/blob.txt"), "from a blob");
    // 20 MiB from a ReadableStream, hashed on both sides.
    const hash = createHash("sha256");
    let n = 0;
    const upload = new ReadableStream({
      pull(ctl) {
        if (n === 20) return ctl.close();
        const chunk = randomBytes(1 << 20);
        hash.update(chunk);
        n++;
        ctl.enqueue(new Uint8Array(chunk));
      },
    });
    assert.equal((await m.files.write("/workspace/big.bin", upload)).size, 20 << 20);
    const sum = (await m.commands.run(["sha256sum", "/workspace/big.bin"])).stdout.split(" ")[0];
    assert.equal(sum, hash.digest("hex"));
    const names = (await m.files.list("/workspace")).map((e) => e.name);
    assert.ok(names.includes("a") && names.includes("big.bin"));
    assert.equal(await m.files.exists("/workspace/nope"), false);
    assert.equal((await m.files.makeDir("/workspace/d/e")).type, "dir");
    assert.equal((await m.files.rename("/workspace/a/b.txt", "/workspace/d/c.txt")).path, "/workspace/d/c.txt");
    await m.files.remove("/workspace/d", { recursive: true });
    await assert.rejects(m.files.read("/workspace/d/c.txt"), errors.PathNotFoundError);
  });

  test("commands: results, callbacks as output comes, background, reattach after pause", async () => {
    const m = await machine();
    const r = await m.commands.run(["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert.deepEqual([r.stdout, r.stderr, r.exitCode], ["out\n", "err\n", 3]);
    assert.equal((await m.commands.run("echo $FOO", { shell: true, envs: { FOO: "bar" } })).stdout, "bar\n");
    assert.equal((await m.commands.run("pwd", { cwd: "/tmp" })).stdout, "/tmp\n");
    assert.equal((await m.commands.run("id -un", { user: "nobody" })).stdout, "nobody\n");
    assert.equal((await m.commands.run("cat", { stdin: "piped" })).stdout, "piped");
    assert.equal((await m.commands.run("sleep 5", { timeout: 1 })).timedOut, true);
    await assert.rejects(m.commands.run("sh -c 'exit 4'", { shell: true, check: true }), (e) => e instanceof errors.CommandExitError && e.exitCode === 4);
    const seen = [];
    await m.commands.run("echo one; sleep 1; echo two >&2; sleep 1; echo three", {
      shell: true, onStdout: (d) => seen.push(["out", d, Date.now()]), onStderr: (d) => seen.push(["err", d, Date.now()]),
    });
    assert.deepEqual(seen.map(([k, d]) => [k, d]), [["out", "one\n"], ["err", "two\n"], ["out", "three\n"]]);
    assert.ok(seen[2][2] - seen[0][2] > 1500, "callbacks came at the end, not as output came");
    const cat = await m.commands.run("cat", { background: true, keepStdinOpen: true });
    await cat.sendStdin("hello ");
    await cat.sendStdin("world", { close: true });
    assert.equal((await cat.wait()).stdout, "hello world");
    const sleeper = await m.commands.run("sleep 100", { background: true });
    assert.ok((await m.commands.list()).some((p) => p.pid === sleeper.pid && p.running));
    assert.equal(await sleeper.kill(), true);
    assert.equal((await sleeper.wait()).signal, "SIGKILL");
    // Reattach after pause and resume, from the offsets read so far.
    const h = await m.commands.run("i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); sleep 0.1; done", { shell: true, background: true });
    let got = "";
    for await (const ch of h) {
      got += ch.data;
      if (got.split("\n").length > 3) break;
    }
    await m.pause();
    const resumed = await Machine.connect(m.id);
    made.push(resumed.id);
    const rest = await (await resumed.commands.connect(h.pid, { stdoutOffset: h.stdoutOffset })).wait();
    const want = Array.from({ length: 30 }, (_, i) => `line${i}\n`).join("");
    assert.equal(got + rest.stdout, want);
    assert.equal((await (await resumed.commands.connect(h.pid)).wait()).stdout, want);
    await assert.rejects(resumed.commands.connect(99999), errors.ProcessNotFoundError);
  });

  test("terminals: size, resize, Ctrl-C, exit code, reattach after pause", async () => {
    const m = await machine();
    let screen = "";
    const dec = new TextDecoder();
    const until = (want) => eventually(`the terminal showing ${JSON.stringify(want)} (${JSON.stringify(screen.slice(-200))})`, () => screen.includes(want), 20_000);
    const t = await m.pty.create({ size: { rows: 30, cols: 100 }, onData: (b) => { screen += dec.decode(b, { stream: true }); } });
    await t.sendStdin("stty size; echo sum=$((6*7))\n");
    await until("30 100");
    await until("sum=42");
    await t.resize({ rows: 40, cols: 120 });
    await m.pty.sendStdin(t.pid, new TextEncoder().encode("stty size\n"));
    await until("40 120");
    await t.sendStdin("sleep 100\n");
    await new Promise((r) => setTimeout(r, 500));
    await t.sendStdin(new Uint8Array([3])); // Ctrl-C
    await t.sendStdin("echo after=$?; export kept=yes\n");
    await until("after=130");
    await assert.rejects(m.pty.resize(t.pid, { rows: 0, cols: 0 }), errors.InvalidArgumentError);
    assert.throws(() => t.sendStdin("x", { close: true }), errors.InvalidArgumentError);

    await m.pause();
    const resumed = await Machine.connect(m.id);
    made.push(resumed.id);
    let screen2 = "";
    const t2 = await resumed.pty.connect(t.pid, { onData: (b) => { screen2 += dec.decode(b, { stream: true }); } });
    await resumed.pty.sendStdin(t.pid, "echo kept=$kept; exit 3\n");
    assert.equal((await t2.wait()).exitCode, 3);
    assert.ok(screen2.includes("sum=42") && screen2.includes("kept=yes"), screen2);
  });

  test("watchDir: events as they happen, polling, stop", async () => {
    const m = await machine();
    await m.commands.run("mkdir -p /workspace/w", { shell: true });
    const events = [];
    const w = await m.files.watchDir("/workspace/w", { recursive: true, onEvent: (e) => { events.push(e); } });
    assert.match(w.watchId, /^wch_/);
    const seen = (...want) => eventually(`events ${want}`, () => {
      const keys = events.map((e) => `${e.type} ${e.oldPath ? e.oldPath + ">" : ""}${e.path}`);
      let i = 0;
      for (const k of keys) if (i < want.length && k === want[i]) i++;
      return i === want.length;
    }, 20_000);
    await m.files.write("/workspace/w/a.txt", "x");
    await seen("create /workspace/w/a.txt", "write /workspace/w/a.txt");
    await m.files.rename("/workspace/w/a.txt", "/workspace/w/b.txt");
    await m.commands.run("mkdir /workspace/w/sub && echo y > /workspace/w/sub/c && rm /workspace/w/b.txt", { shell: true });
    await seen("rename /workspace/w/a.txt>/workspace/w/b.txt", "create /workspace/w/sub", "create /workspace/w/sub/c", "remove /workspace/w/b.txt");
    assert.ok(events.every((e) => e.seq > 0));
    await w.stop();

    const p = await m.files.watchDir("/workspace/w");
    assert.deepEqual(await p.getNewEvents(), []);
    await m.files.write("/workspace/w/polled", "z");
    const got = await eventually("a polled event", async () => (await p.getNewEvents()).find((e) => e.path === "/workspace/w/polled"));
    assert.equal(got.type, "create");
    await p.stop();
    await assert.rejects(m.files.watchDir("/workspace/nope"), errors.PathNotFoundError);
  });

  test("typed errors, their fields and cause", async () => {
    const bad = new Client({ apiKey: "not-a-key" });
    await assert.rejects(Machine.getInfoById("mch_00000000000000000000", { client: bad }), errors.AuthenticationError);
    await assert.rejects(Machine.connect("mch_00000000000000000000"), (e) =>
      e instanceof errors.MachineNotFoundError && e instanceof errors.NotFoundError && e instanceof errors.NullspaceError &&
      e.code === "machine_not_found" && e.status === 404 && e.retryable === false && e.suggestedAction !== "");
    await assert.rejects(Machine.create({ template: "base", autoResume: true }), (e) =>
      e instanceof errors.InvalidArgumentError && e.code === "auto_resume_requires_pause");
    await assert.rejects(Machine.create({ template: "no-such-template" }), errors.TemplateNotFoundError);
    await assert.rejects(new Client().volumes.delete("no-such-volume"), errors.VolumeNotFoundError);
    await assert.rejects(Machine.create({ timeout: -1 }), errors.InvalidArgumentError); // before sending
    const free = (await import("node:net")).createServer();
    await new Promise((r) => free.listen(0, "127.0.0.1", r));
    const port = free.address().port;
    await new Promise((r) => free.close(r));
    const down = new Client({ apiUrl: `http://127.0.0.1:${port}`, maxRetries: 1 });
    await assert.rejects(Machine.getInfoById("mch_1", { client: down }), (e) => e instanceof errors.ConnectionError && e.cause !== undefined);
    const m = await machine({ command: "sleep 100" });
    await assert.rejects(m.wait({ requestTimeout: 1 }), (e) => e instanceof errors.TimeoutError && e.code === "request_timeout");
    await assert.rejects(m.wait({ timeout: 0.5 }), (e) => e instanceof errors.TimeoutError && e.code === "deadline_exceeded");
  });

  test("abort: an AbortSignal ends a call and a stream", async () => {
    const m = await machine();
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(new Error("enough")), 300);
    const start = Date.now();
    await assert.rejects(m.commands.run("sleep 10", { signal: ctl.signal }), (e) => e instanceof errors.AbortError && e.cause?.message === "enough");
    assert.ok(Date.now() - start < 5000);
    const h = await m.commands.run("sleep 10", { background: true });
    const ctl2 = new AbortController();
    setTimeout(() => ctl2.abort(), 300);
    await assert.rejects(h.wait({ signal: ctl2.signal }), errors.AbortError);
    await assert.rejects(m.getInfo({ signal: AbortSignal.abort() }), errors.AbortError);
  });

  test("list paging, metrics, monitor, events, urls, volumes", async () => {
    const tag = randomUUID().slice(0, 8);
    const ids = new Set();
    for (let i = 0; i < 3; i++) ids.add((await machine({ metadata: { page: tag } })).id);
    const got = [];
    for await (const info of Machine.list({ metadata: { page: tag }, pageSize: 1 })) got.push(info.id);
    assert.deepEqual(new Set(got), ids);
    assert.equal(got.length, 3);
    const m = await machine();
    assert.ok((await m.getMetrics()).length >= 1, "a running machine has a sample at once");
    const samples = [];
    for await (const s of m.monitor()) {
      samples.push(s);
      if (samples.length === 2) break;
    }
    assert.ok(samples[1].timestamp > samples[0].timestamp);
    await m.pause();
    const c = new Client();
    const types = [];
    for await (const e of c.events({ machineId: m.id, follow: false })) types.push(e.type);
    assert.equal(types[0], "machine.created");
    assert.ok(types.includes("machine.paused"));
    const r = await Machine.connect(m.id);
    made.push(r.id);
    await r.files.write("/workspace/index.html", "hi from the edge");
    await r.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", { cwd: "/workspace", background: true });
    const url = await r.getUrl(8000);
    assert.ok(url.wsUrl.startsWith("ws"));
    const body = await eventually("the server answers", async () => {
      const res = await fetch(url.url + "/index.html");
      return res.ok ? res.text() : undefined;
    });
    assert.equal(body, "hi from the edge");
    const vol = `v${tag}`;
    await c.volumes.create(vol);
    const vm = await machine({ volumes: { [vol]: "/data" } });
    await vm.files.write("/data/x.txt", "on the volume");
    const names = [];
    for await (const v of c.volumes.list()) names.push(v.name);
    assert.ok(names.includes(vol));
    await vm.kill();
    await c.volumes.delete(vol);
  });

  test("a template from an uploaded tarball; files' owner and group", async () => {
    // The server's minimal template (busybox) with two files of other
    // owners appended, gzip; uploaded from its path by the ESM run and as a
    // ReadableStream (chunked) by the CJS run.
    const rootfs = process.env.NULLSPACE_TEST_ROOTFS;
    assert.ok(rootfs && existsSync(join(rootfs, "bin", "busybox")),
      `NULLSPACE_TEST_ROOTFS=${rootfs} is not a root filesystem with /bin/busybox: set it to the server's minimal template, as e2e TestTypeScriptSDK does`);
    const dir = mkdtempSync(join(tmpdir(), "ns-live-upload-"));
    const extra = join(dir, "extra");
    mkdirSync(join(extra, "workspace"), { recursive: true });
    writeFileSync(join(extra, "workspace", "mine"), "uploaded\n");
    writeFileSync(join(extra, "workspace", "nobody"), "");
    const tar = join(dir, "rootfs.tar");
    execFileSync("tar", ["-C", rootfs, "-cf", tar, "."]);
    execFileSync("tar", ["-C", extra, "--numeric-owner", "--owner=1000", "--group=1000", "-rf", tar, "./workspace/mine"]);
    execFileSync("tar", ["-C", extra, "--numeric-owner", "--owner=4242", "--group=4242", "-rf", tar, "./workspace/nobody"]);
    execFileSync("gzip", [tar]);
    const path = `${tar}.gz`;
    const c = new Client();
    const name = `upload-${build}-${randomUUID().slice(0, 8)}`;
    await assert.rejects(c.templates.build(name, { fromTemplate: "minimal", tarball: path }), errors.InvalidArgumentError);
    const tarball = build === "esm" ? path : Readable.toWeb(createReadStream(path));
    const t = await c.templates.build(name, { tarball, steps: ["cat /workspace/mine > /from-step"], workdir: "/workspace" });
    try {
      assert.deepEqual([t.name, t.state, t.source, t.error], [name, "ready", "upload", ""]);
      const m = await machine({ template: name });
      const r = await m.commands.run("cat /from-step && pwd && busybox | head -1", { shell: true });
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(r.stdout.split("\n").slice(0, 2), ["uploaded", "/workspace"]);
      assert.match(r.stdout, /BusyBox/);
      const owners = Object.fromEntries((await m.files.list("/workspace")).map((e) => [e.name, [e.owner, e.group]]));
      assert.deepEqual([owners.mine, owners.nobody], [["user", "user"], ["4242", "4242"]]);
      const st = await m.files.stat("/from-step");
      assert.deepEqual([st.owner, st.group], ["root", "root"]);
      await m.kill();
      await c.templates.delete(name);
      await assert.rejects(c.templates.get(name), errors.TemplateNotFoundError);
    } finally {
      for (const id of made) await Machine.kill(id).catch(() => undefined);
      await c.templates.delete(name).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
