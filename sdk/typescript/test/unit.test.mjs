// Unit tests of the SDK's own logic against a scripted loopback server:
// error classes, retries and their limits, Retry-After, the generated wire
// types being current. No Nullspace server needed; both builds are tested.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
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

/** A server whose routes answer from queues: "METHOD /path" -> [[status, body, headers], ...] (the last repeats). */
function scripted() {
  const routes = new Map();
  const seen = [];
  const calls = []; // [method, url with query, body]
  const srv = createServer((req, res) => {
    const path = req.url.split("?")[0];
    seen.push(`${req.method} ${path}`);
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      calls.push([req.method, req.url, Buffer.concat(chunks).toString()]);
      const q = routes.get(`${req.method} ${path}`) ?? [[404, { code: "not_found", message: "no route" }]];
      const [status, body, headers] = q.length > 1 ? q.shift() : q[0];
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

    test("idempotent calls are retried, a create never twice", async () => {
      const c = new sdk.Client({ apiUrl: url, apiKey: "k" });
      s.routes.set("GET /v1/machines/mch_2", [[503, err("unavailable", true), { "Retry-After": "0" }], [503, err("unavailable", true), { "Retry-After": "0" }], [200, { ...MACHINE, id: "mch_2" }]]);
      assert.equal((await sdk.Machine.getInfoById("mch_2", { client: c })).id, "mch_2");
      s.routes.set("GET /v1/machines/mch_9", [[200, { ...MACHINE, id: "mch_9", state: "failed", failure_reason: "oom" }]]);
      const failed = await sdk.Machine.getInfoById("mch_9", { client: c });
      assert.equal(failed.failureReason, "oom");
      assert.equal(s.count("GET /v1/machines/mch_2"), 3);
      s.routes.set("POST /v1/machines", [[503, err("unavailable", true), { "Retry-After": "0" }]]);
      await assert.rejects(sdk.Machine.create({ client: c }), sdk.UnavailableError);
      assert.equal(s.count("POST /v1/machines"), 1);
      s.routes.set("GET /v1/machines/mch_3", [[404, err("machine_not_found")]]);
      await assert.rejects(sdk.Machine.getInfoById("mch_3", { client: c }), sdk.MachineNotFoundError);
      assert.equal(s.count("GET /v1/machines/mch_3"), 1);
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
