// Unit tests of the SDK's own logic against a scripted loopback server:
// error classes, retries and their limits, Retry-After, the generated wire
// types being current. No Nullspace server needed; both builds are tested.

import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const builds = {
  esm: await import("../dist/esm/index.js"),
  cjs: createRequire(import.meta.url)("../dist/cjs/index.js"),
};

const MACHINE = { id: "mch_1", state: "running", template: "base", cpu_count: 2, memory_mb: 512, allow_internet: false,
  created_at: "2026-12-01T10:00:00Z", lineage_id: "mch_1", latest_id: "mch_1" };

/**
 * A server whose routes answer from queues: "METHOD /path" -> [[status, body, headers], ...] (the last repeats);
 * an entry that is a function (req, res) answers by itself (or not: see drop).
 */
function scripted() {
  const routes = new Map();
  const seen = [];
  const calls = []; // [method, url with query, body, headers]
  const srv = createServer((req, res) => {
    const path = req.url.split("?")[0];
    seen.push(`${req.method} ${path}`);
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      calls.push([req.method, req.url, Buffer.concat(chunks).toString(), req.headers]);
      const q = routes.get(`${req.method} ${path}`) ?? [[404, { code: "not_found", message: "no route" }]];
      const entry = q.length > 1 ? q.shift() : q[0];
      if (typeof entry === "function") return entry(req, res);
      const [status, body, headers] = entry;
      res.writeHead(status, { "Content-Type": "application/json", ...(headers ?? {}) });
      res.end(JSON.stringify(body));
    });
  });
  return {
    routes, seen, calls, srv,
    count: (key) => seen.filter((s) => s === key).length,
    start: () => new Promise((r) => srv.listen(0, "127.0.0.1", () => r(`http://127.0.0.1:${srv.address().port}`))),
  };
}

/** A loopback port nothing listens on. */
async function closedPort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const port = srv.address().port;
  await new Promise((r) => srv.close(r));
  return port;
}

const err = (code, retryable = false) => ({ code, message: `test ${code}`, retryable, suggested_action: "do the thing" });

/** A queue entry that reads the request, waits `ms` and closes the connection without answering. */
const drop = (ms = 0) => (req, res) => setTimeout(() => res.socket.destroy(), ms);

const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

for (const [name, sdk] of Object.entries(builds)) {
  describe(`${name} build`, () => {
    let s;
    let url;
    before(async () => {
      s = scripted();
      url = await s.start();
    });
    after(() => s.srv.close());

    test("every code raises its class, with its fields", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k", maxRetries: 0 });
      const cases = [
        [401, "unauthenticated", sdk.AuthenticationError], [400, "invalid_argument", sdk.InvalidArgumentError],
        [404, "machine_not_found", sdk.MachineNotFoundError], [404, "snapshot_not_found", sdk.SnapshotNotFoundError],
        [404, "file_not_found", sdk.PathNotFoundError], [404, "process_not_found", sdk.ProcessNotFoundError],
        [409, "machine_not_running", sdk.MachineNotRunningError], [409, "snapshot_incompatible", sdk.SnapshotIncompatibleError],
        [409, "snapshot_corrupt", sdk.SnapshotCorruptError], [409, "conflict", sdk.ConflictError],
        [409, "snapshot_name_exists", sdk.ConflictError],
        [429, "rate_limited", sdk.RateLimitError], [503, "unavailable", sdk.UnavailableError],
        [504, "deadline_exceeded", sdk.TimeoutError], [507, "resource_exhausted", sdk.ResourceExhaustedError], [503, "capacity_exhausted", sdk.ResourceExhaustedError],
        [418, "a_code_from_the_future", sdk.NullspaceError],
      ];
      for (const [status, code, cls] of cases) {
        s.routes.set("GET /v1/machines/mch_1", [[status, err(code), { "Retry-After": "7" }]]);
        await assert.rejects(sdk.Machine.getInfoById("mch_1", { client: c }), (e) => {
          assert.equal(e.constructor, cls, code);
          assert.ok(e instanceof sdk.NullspaceError && e instanceof Error);
          assert.deepEqual([e.code, e.status, e.suggestedAction, e.retryAfter], [code, status, "do the thing", 7]);
          return true;
        });
      }
    });

    test("idempotent calls are retried, a command never twice", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      s.routes.set("GET /v1/machines/mch_2", [[503, err("unavailable", true), { "Retry-After": "0" }], [503, err("unavailable", true), { "Retry-After": "0" }], [200, { ...MACHINE, id: "mch_2" }]]);
      assert.equal((await sdk.Machine.getInfoById("mch_2", { client: c })).id, "mch_2");
      s.routes.set("GET /v1/machines/mch_9", [[200, { ...MACHINE, id: "mch_9", state: "failed", failure_reason: "oom" }]]);
      const failed = await sdk.Machine.getInfoById("mch_9", { client: c });
      assert.equal(failed.failureReason, "oom");
      assert.equal(s.count("GET /v1/machines/mch_2"), 3);
      s.routes.set("POST /v1/machines/mch_2/commands", [[503, err("agent_unavailable", true), { "Retry-After": "0" }]]);
      const m2 = new sdk.Machine({ ...MACHINE, id: "mch_2" }, c);
      await assert.rejects(m2.commands.run("echo once"), sdk.UnavailableError);
      assert.equal(s.count("POST /v1/machines/mch_2/commands"), 1);
      s.routes.set("GET /v1/machines/mch_3", [[404, err("machine_not_found")]]);
      await assert.rejects(sdk.Machine.getInfoById("mch_3", { client: c }), sdk.MachineNotFoundError);
      assert.equal(s.count("GET /v1/machines/mch_3"), 1);
    });

    test("a create, fork and snapshot dropped after they were read are sent again with the same Idempotency-Key", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      const snap = { id: "snp_k", kind: "snapshot", machine_id: "mch_k", lineage_id: "mch_k", template: "base", size_bytes: 1,
        created_at: "2026-12-01T10:00:00Z", generation: 1, checksum: "c", pause_window_ms: 1, runtime_version: "r", kernel: "k", children: 0 };
      const paths = ["/v1/machines", "/v1/machines/mch_k/fork", "/v1/machines/mch_k/snapshots"];
      s.routes.set("POST /v1/machines", [drop(), [201, { ...MACHINE, id: "mch_k" }]]);
      s.routes.set("POST /v1/machines/mch_k/fork", [drop(), [201, { snapshot: snap, machines: [{ ...MACHINE, id: "mch_k2" }] }]]);
      s.routes.set("POST /v1/machines/mch_k/snapshots", [drop(), [201, snap]]);
      s.calls.length = 0;
      const mk = await sdk.Machine.create({ client: c, template: "base" });
      assert.equal(mk.id, "mch_k");
      assert.deepEqual((await mk.fork(1)).map((x) => x.id), ["mch_k2"]);
      assert.equal((await mk.createSnapshot()).id, "snp_k");
      const keys = new Set();
      for (const p of paths) {
        const sent = s.calls.filter((x) => x[0] === "POST" && x[1] === p);
        assert.equal(sent.length, 2, p);
        assert.match(sent[0][3]["idempotency-key"], UUID4, p);
        assert.equal(sent[1][3]["idempotency-key"], sent[0][3]["idempotency-key"], p);
        assert.equal(sent[1][2], sent[0][2], p);
        keys.add(sent[0][3]["idempotency-key"]);
      }
      assert.equal(keys.size, 3, "each call has a key of its own");
    });

    test("every create a new key, the caller's as given, a bad one refused before sending", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      s.routes.set("POST /v1/machines", [[201, MACHINE]]);
      s.routes.set("POST /v1/machines/mch_1/fork", [[201, { snapshot: {}, machines: [] }]]);
      s.calls.length = 0;
      const m1 = await sdk.Machine.create({ client: c });
      await sdk.Machine.create({ client: c });
      await sdk.Machine.create({ client: c, idempotencyKey: "job-42 create" });
      await sdk.Machine.create({ client: c, idempotencyKey: "x".repeat(255) });
      await m1.fork(2, { idempotencyKey: "fork-1" });
      const keys = s.calls.map((x) => x[3]["idempotency-key"]);
      assert.equal(keys.length, 5);
      assert.notEqual(keys[0], keys[1]);
      assert.deepEqual(keys.slice(2), ["job-42 create", "x".repeat(255), "fork-1"]);
      for (const bad of ["", "x".repeat(256), "café", "a\nb", " lead"]) {
        await assert.rejects(sdk.Machine.create({ client: c, idempotencyKey: bad }), sdk.InvalidArgumentError, JSON.stringify(bad));
      }
      await assert.rejects(m1.createSnapshot({ idempotencyKey: "" }), sdk.InvalidArgumentError);
      assert.equal(s.calls.length, 5);
    });

    test("idempotency_key_reused is not retried; in progress and a request timeout are", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      s.routes.set("POST /v1/machines", [[422, err("idempotency_key_reused")]]);
      s.calls.length = 0;
      await assert.rejects(sdk.Machine.create({ client: c, idempotencyKey: "k1" }), (e) => {
        assert.equal(e.constructor, sdk.ConflictError);
        assert.deepEqual([e.code, e.status], ["idempotency_key_reused", 422]);
        return true;
      });
      assert.equal(s.calls.length, 1);
      s.routes.set("POST /v1/machines", [[409, err("idempotency_key_in_progress", true), { "Retry-After": "0" }], [201, MACHINE]]);
      s.routes.set("POST /v1/machines/mch_1/fork", [drop(500), [201, { snapshot: {}, machines: [MACHINE] }]]);
      s.calls.length = 0;
      const m1 = await sdk.Machine.create({ client: c });
      assert.equal((await m1.fork(1, { requestTimeout: 0.2 })).length, 1);
      const [a, b, f1, f2] = s.calls.map((x) => x[3]["idempotency-key"]);
      assert.equal(s.calls.length, 4);
      assert.equal(a, b);
      assert.equal(f1, f2);
      assert.notEqual(a, f1);
    });

    test("a refused connection is a ConnectionError with its cause, retried even for a create", async () => {
      const c = new sdk.Client({ apiUrl: `http://127.0.0.1:${await closedPort()}`, apiKey: "k", maxRetries: 2 });
      const start = Date.now();
      await assert.rejects(sdk.Machine.create({ client: c }), (e) => e instanceof sdk.ConnectionError && e.cause !== undefined && e.retryable);
      assert.ok(Date.now() - start > 100, "no backoff between attempts");
    });

    test("file calls name their user: in the query, or the mkdir and rename bodies", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k", maxRetries: 0 });
      s.routes.set("POST /v1/machines/mch_f/connect", [[200, { ...MACHINE, id: "mch_f" }]]);
      const entry = { name: "a", path: "/a", type: "file", size: 1, mode: "0644", mod_time: "2026-12-01T10:00:00Z" };
      s.routes.set("GET /v1/machines/mch_f/files/stat", [[200, entry]]);
      s.routes.set("POST /v1/machines/mch_f/files/mkdir", [[200, entry]]);
      s.routes.set("POST /v1/machines/mch_f/files/rename", [[200, entry]]);
      s.routes.set("PUT /v1/machines/mch_f/files", [[200, { path: "/a", size: 1 }], [200, { path: "/a", size: 1, metadata: { k: "v" } }]]);
      const mf = await sdk.Machine.connect("mch_f", { client: c });
      s.calls.length = 0;
      await mf.files.stat("/a", { user: "user" });
      await mf.files.write("/a", "x", { user: "1000" });
      await mf.files.makeDir("/d", { user: "user" });
      await mf.files.rename("/a", "/b", { user: "user" });
      await mf.files.stat("/a");
      const [stat, write, mkdir, rename, plain] = s.calls;
      assert.equal(new URL(stat[1], url).searchParams.get("user"), "user");
      assert.equal(new URL(write[1], url).searchParams.get("user"), "1000");
      assert.deepEqual(JSON.parse(mkdir[2]), { path: "/d", user: "user" });
      assert.deepEqual(JSON.parse(rename[2]), { from: "/a", to: "/b", user: "user" });
      assert.equal(new URL(plain[1], url).searchParams.has("user"), false);

      // Metadata goes as metadata[KEY]= and comes back on the write and the entries.
      s.calls.length = 0;
      s.routes.set("GET /v1/machines/mch_f/files/stat", [[200, { ...entry, metadata: { k: "v" } }]]);
      const w = await mf.files.write("/a", "x", { metadata: { k: "v" } });
      assert.deepEqual(w.metadata, { k: "v" });
      assert.equal(new URL(s.calls[0][1], url).searchParams.get("metadata[k]"), "v");
      assert.deepEqual((await mf.files.stat("/a")).metadata, { k: "v" });
    });

    test("a snapshot's name is sent when given, read back, and filters lists", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k", maxRetries: 0 });
      const snap = { id: "snp_1", kind: "snapshot", machine_id: "mch_n", lineage_id: "mch_n", template: "base", size_bytes: 1,
        created_at: "2026-12-01T10:00:00Z", generation: 1, checksum: "c", pause_window_ms: 1, runtime_version: "r", kernel: "k",
        children: 0, name: "web" };
      s.routes.set("POST /v1/machines/mch_n/connect", [[200, { ...MACHINE, id: "mch_n" }]]);
      s.routes.set("POST /v1/machines/mch_n/snapshots", [[201, snap]]);
      s.routes.set("GET /v1/snapshots", [[200, { snapshots: [snap], next_token: "" }]]);
      const mn = await sdk.Machine.connect("mch_n", { client: c });
      s.calls.length = 0;
      assert.equal((await mn.createSnapshot({ name: "web" })).name, "web");
      await mn.createSnapshot();
      const listed = [];
      for await (const sn of c.snapshots.list({ name: "web" })) listed.push(sn.name);
      assert.deepEqual(listed, ["web"]);
      const [named, plain, list] = s.calls;
      assert.deepEqual(JSON.parse(named[2]), { name: "web" });
      assert.equal(plain[2], "");
      assert.equal(new URL(list[1], url).searchParams.get("name"), "web");
    });

    test("bad arguments are refused before anything is sent", async () => {
      const before = s.seen.length;
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      await assert.rejects(sdk.Machine.create({ client: c, timeout: -1 }), sdk.InvalidArgumentError);
      await assert.rejects(sdk.Machine.create({ client: c, command: [] }), sdk.InvalidArgumentError);
      assert.throws(() => new sdk.Client({ apiUrl: "ftp://x" }), sdk.InvalidArgumentError);
      assert.equal(s.seen.length, before);
    });
  });
}

/** A server that keeps each request's raw body and headers, and answers with answer(req, body). */
async function recorder(answer) {
  const got = [];
  const srv = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      got.push({ method: req.method, url: req.url, headers: req.headers, body });
      const [status, json] = answer(req, body);
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(json));
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return { got, srv, url: `http://127.0.0.1:${srv.address().port}` };
}

const TEMPLATE = { name: "up", state: "ready", size_bytes: 1, created_at: "2026-12-01T10:00:00Z", source: "upload" };

/** The multipart body an upload of request and data must be, exactly. */
function uploadBody(boundary, request, data) {
  const b = `--${boundary}\r\n`;
  return Buffer.concat([
    Buffer.from(b + 'Content-Disposition: form-data; name="request"\r\nContent-Type: application/json\r\n\r\n' + JSON.stringify(request) + "\r\n" +
      b + 'Content-Disposition: form-data; name="tarball"; filename="rootfs.tar"\r\nContent-Type: application/octet-stream\r\n\r\n'),
    Buffer.from(data),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
}

for (const [name, sdk] of Object.entries(builds)) {
  describe(`${name} build: template uploads`, () => {
    let r;
    const data = randomBytes((300 << 10) + 7);
    const dir = mkdtempSync(join(tmpdir(), "ns-upload-"));
    const path = join(dir, "rootfs.tar.gz");
    writeFileSync(path, data);
    before(async () => {
      r = await recorder((req) => (req.url === "/v1/templates" ? [201, TEMPLATE] : [404, { code: "not_found", message: "no" }]));
    });
    after(() => r.srv.close());

    /** Checks the one request sent: multipart, request part then tarball, byte for byte. */
    function sent(request, bytes, { chunked = false } = {}) {
      assert.equal(r.got.length, 1);
      const { method, url, headers, body } = r.got.pop();
      assert.deepEqual([method, url], ["POST", "/v1/templates"]);
      const m = /^multipart\/form-data; boundary=(\S+)$/.exec(headers["content-type"]);
      assert.ok(m, headers["content-type"]);
      if (chunked) {
        assert.equal(headers["transfer-encoding"], "chunked");
        assert.equal(headers["content-length"], undefined);
      } else {
        assert.equal(headers["content-length"], String(body.length));
      }
      assert.ok(body.equals(uploadBody(m[1], request, bytes)), `the body is not the multipart upload:\n${body.subarray(0, 400)}`);
    }

    test("a Blob, bytes, an ArrayBuffer and a path are sent with their length", async () => {
      const c = new sdk.Client({ apiUrl: r.url, apiKey: "k" });
      const t = await c.templates.build("up", { tarball: new Blob([data]), steps: ["echo hi"], workdir: "/w", envs: { A: "1" } });
      assert.deepEqual([t.name, t.source], ["up", "upload"]);
      sent({ name: "up", steps: ["echo hi"], workdir: "/w", env: { A: "1" } }, data);
      await c.templates.build("up", { tarball: new Uint8Array(data) });
      sent({ name: "up", steps: [] }, data);
      await c.templates.build("up", { tarball: new Uint8Array(data).buffer });
      sent({ name: "up", steps: [] }, data);
      await c.templates.build("up", { tarball: path });
      sent({ name: "up", steps: [] }, data);
    });

    test("a ReadableStream is read as it is sent, chunked", async () => {
      const c = new sdk.Client({ apiUrl: r.url, apiKey: "k" });
      let pulls = 0;
      let off = 0;
      const stream = new ReadableStream({
        pull(ctl) {
          pulls++;
          if (off >= data.length) return ctl.close();
          ctl.enqueue(new Uint8Array(data.subarray(off, off + 50_000)));
          off += 50_000;
        },
      }, { highWaterMark: 0 });
      const req = c.templates.build("up", { tarball: stream });
      assert.equal(pulls, 0, "the stream was read before the call was sent");
      await req;
      sent({ name: "up", steps: [] }, data, { chunked: true });
      assert.ok(pulls > 5, `${pulls} pulls`);
    });

    test("without a tarball: JSON, from base by default", async () => {
      const c = new sdk.Client({ apiUrl: r.url, apiKey: "k" });
      await c.templates.build("t1", { steps: ["true"] });
      await c.templates.build("t2", { fromTemplate: "minimal" });
      const got = r.got.splice(0).map((g) => [g.headers["content-type"], JSON.parse(g.body.toString())]);
      assert.deepEqual(got, [["application/json", { name: "t1", steps: ["true"], from_template: "base" }],
        ["application/json", { name: "t2", steps: [], from_template: "minimal" }]]);
    });

    test("bad sources are refused before anything is sent", async () => {
      const c = new sdk.Client({ apiUrl: r.url, apiKey: "k" });
      const cases = [
        [{ fromTemplate: "base", tarball: path }, /one source/],
        [{ tarball: join(dir, "missing.tar") }, /ENOENT/],
        [{ tarball: dir }, /not a regular file/],
        [{ tarball: 42 }, /not number/],
        [{ tarball: new ReadableStream({ start: (ctl) => { ctl.enqueue("text"); ctl.close(); } }) }, /gave string/],
      ];
      for (const [o, msg] of cases) {
        await assert.rejects(c.templates.build("up", o), (e) => {
          assert.ok(e instanceof sdk.InvalidArgumentError, `${e}`);
          assert.match(e.message, msg);
          return true;
        });
      }
      // The text stream fails mid-way: nothing was built, no answer parsed.
      assert.ok(r.got.every((g) => g.body.length === 0 || !g.body.includes("text")), "a bad chunk was sent");
      r.got.length = 0;
    });

    test("the server's 413 file_too_large", async () => {
      const big = await recorder(() => [413, { code: "file_too_large", message: "too large", retryable: false, suggested_action: "compress it" }]);
      try {
        const c = new sdk.Client({ apiUrl: big.url, apiKey: "k" });
        await assert.rejects(c.templates.build("big", { tarball: new Blob([data]) }), (e) => {
          assert.ok(e instanceof sdk.InvalidArgumentError);
          assert.deepEqual([e.code, e.status, e.suggestedAction], ["file_too_large", 413, "compress it"]);
          return true;
        });
        assert.equal(big.got.length, 1, "an upload was sent twice");
        assert.match(big.got[0].headers["content-type"], /^multipart\/form-data; boundary=/);
      } finally {
        big.srv.close();
      }
    });

    test("a large file is sent as it is read, not held in memory", async () => {
      // A 256 MiB sparse file uploaded by a child process, which reports
      // the most memory its buffers took.
      let n = 0;
      const sink = createServer((req, res) => {
        req.on("data", (c) => (n += c.length));
        req.on("end", () => res.writeHead(201, { "Content-Type": "application/json" }).end(JSON.stringify(TEMPLATE)));
      });
      await new Promise((res) => sink.listen(0, "127.0.0.1", res));
      const big = join(dir, "big.tar");
      execFileSync("truncate", ["-s", "256M", big]);
      try {
        const mod = name === "cjs" ? `require(${JSON.stringify(join(here, "..", "dist", "cjs", "index.js"))})`
          : `await import(${JSON.stringify(join(here, "..", "dist", "esm", "index.js"))})`;
        const script = `const sdk = ${mod}; let peak = 0;
          const t = setInterval(() => { peak = Math.max(peak, process.memoryUsage().arrayBuffers); }, 5);
          await new sdk.Client({ apiUrl: "http://127.0.0.1:${sink.address().port}", apiKey: "k" }).templates.build("big", { tarball: ${JSON.stringify(big)} });
          clearInterval(t); console.log(peak);`;
        const out = await new Promise((res, rej) => execFile(process.execPath, ["--input-type=module", "-e", name === "cjs" ? `import { createRequire } from "node:module"; const require = createRequire(import.meta.url); ${script}` : script],
          (e, stdout, stderr) => (e ? rej(new Error(`${e.message}\n${stderr}`)) : res(stdout))));
        assert.ok(n > 256 << 20, `the server got ${n} bytes`);
        assert.ok(Number(out) < 64 << 20, `the upload held ${Number(out) >> 20} MiB of buffers`);
      } finally {
        sink.close();
      }
    });
  });

  test(`${name}: file entries carry owner and group`, async () => {
    const entry = { name: "a", path: "/w/a", type: "file", size: 1, mode: "0644", mod_time: "2026-12-01T10:00:00Z", owner: "user", group: "1234" };
    const { owner: _o, group: _g, ...old } = entry;
    const r = await recorder((req) => (req.url.startsWith("/v1/machines/mch_1/files/list") ? [200, { entries: [entry] }] : [200, old]));
    try {
      const m = new sdk.Machine({ id: "mch_1", status: "running", latestId: "mch_1" }, new sdk.Client({ apiUrl: r.url, apiKey: "k" }));
      const [e] = await m.files.list("/w");
      assert.deepEqual([e.owner, e.group], ["user", "1234"]);
      const st = await m.files.stat("/w/a"); // a server older than the fields
      assert.deepEqual([st.owner, st.group], ["", ""]);
    } finally {
      r.srv.close();
    }
  });
}

test("the wire types are what api/openapi.yaml generates", () => {
  const out = join(mkdtempSync(join(tmpdir(), "ns-openapi-")), "openapi.ts");
  execFileSync(join(here, "..", "node_modules", ".bin", "openapi-typescript"),
    [join(here, "..", "..", "..", "api", "openapi.yaml"), "--default-non-nullable", "false", "--output", out], { stdio: "pipe" });
  const committed = readFileSync(join(here, "..", "src", "generated", "openapi.ts"), "utf8");
  assert.equal(readFileSync(out, "utf8"), committed, "src/generated/openapi.ts is stale: run `npm run generate` in sdk/typescript");
});

test("the ESM build imports nothing from Node (it runs in browsers)", () => {
  const dist = join(here, "..", "dist", "esm");
  for (const f of ["index.js", "client.js", "config.js", "errors.js", "http.js", "machine.js", "models.js"]) {
    const src = readFileSync(join(dist, f), "utf8");
    assert.doesNotMatch(src, /from\s+["']node:|require\(["']node:|import\(["']node:/, `${f} imports a Node module`);
    assert.doesNotMatch(src, /\bBuffer\b|\bprocess\.env\b/, `${f} uses a Node global unguarded`);
  }
});

for (const [name, sdk] of Object.entries(builds)) {
  test(`${name}: events and command output resume after a cut, without repeats`, async () => {
    const ev = (seq) => JSON.stringify({ seq, type: "machine.created", team_id: "t", machine_id: "mch_1", time: "2026-12-01T10:00:00Z", cause: "api" });
    const out = (data, offset) => JSON.stringify({ type: "stdout", data: Buffer.from(data).toString("base64"), offset });
    const paths = [];
    const srv = createServer((req, res) => {
      paths.push(req.url);
      const n = paths.filter((p) => p.split("?")[0] === req.url.split("?")[0]).length;
      res.writeHead(200, { "Content-Type": "application/x-ndjson" });
      if (req.url.startsWith("/v1/events")) {
        // Cut after the lines are on the wire: the stream breaks mid-answer.
        if (n === 1) return res.write(ev(1) + "\n" + ev(2) + "\n", () => setTimeout(() => res.socket.destroy(), 50));
        return res.end(ev(3) + "\n");
      }
      if (req.url.startsWith("/v1/machines/mch_1/commands/9/output")) {
        if (n === 1) return res.write(out("ab", 0) + "\n", () => setTimeout(() => res.socket.destroy(), 50));
        return res.end(out("abcd", 0) + "\n" + JSON.stringify({ type: "exit", exit_code: 0 }) + "\n");
      }
      if (req.url.startsWith("/v1/machines/mch_1/commands")) return res.end(JSON.stringify({ processes: [{ pid: 9, cmd: ["x"], running: true, started_at: "2026-12-01T10:00:00Z" }] }));
      res.end();
    });
    await new Promise((r) => srv.listen(0, "127.0.0.1", r));
    try {
      const client = new sdk.Client({ apiUrl: `http://127.0.0.1:${srv.address().port}`, apiKey: "k" });
      const seqs = [];
      for await (const e of client.events({ after: 0 })) {
        seqs.push(e.seq);
        if (e.seq === 3) break;
      }
      assert.deepEqual(seqs, [1, 2, 3]);
      assert.ok(paths.some((p) => p.startsWith("/v1/events") && p.includes("after=2")), paths.join(" "));
      const m = new sdk.Machine({ id: "mch_1", status: "running", latestId: "mch_1" }, client);
      const h = await m.commands.connect(9);
      assert.equal((await h.wait()).stdout, "abcd");
      assert.ok(paths.some((p) => p.includes("stdout_offset=2")), paths.join(" "));
    } finally {
      srv.close();
    }
  });
}
