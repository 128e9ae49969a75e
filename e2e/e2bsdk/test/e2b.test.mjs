// E2B's own documented examples, run with E2B's unmodified JavaScript SDK
// against a Nullspace server's E2B-compatible API (serve --e2b-compat).
// e2e TestE2BSDK runs this file once per pinned SDK release (E2B_SDK names
// the npm alias: e2b-latest, e2b-validating or e2b-older) with E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY and E2B_DOMAIN set, as `nullspace e2b env`
// prints them, and TestE2BDomainOnly once more with E2B_DOMAIN and
// E2B_API_KEY alone, against an edge with TLS, as on E2B. Node runs it with
// --import ./resolve-localhost.mjs (wildcard DNS for *.localhost).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'

const sdkName = process.env.E2B_SDK ?? 'e2b-latest'
const { Sandbox, CommandExitError, NotFoundError, TimeoutError, SandboxError } = await import(sdkName)
const sdkVersion = JSON.parse(readFileSync(new URL(`../node_modules/${sdkName}/package.json`, import.meta.url))).version

// atLeast reports whether the SDK release is version v or newer: features
// that are only options of a call cannot be detected otherwise.
function atLeast(v) {
  const [a, b] = [sdkVersion, v].map((x) => x.split('.').map(Number))
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] > b[i]
  return true
}

// File metadata, watch events with their entry and allowNetworkMounts
// (envd 0.6.2 to 0.6.4) came in one SDK line; a release before them (2.16.0)
// sends no X-Metadata- headers.
const sdkSource = readFileSync(createRequire(import.meta.url).resolve(sdkName), 'utf8')
const noMetadata = !sdkSource.includes('X-Metadata-') &&
  'this SDK release has no file metadata, includeEntry or allowNetworkMounts (envd 0.6.2-0.6.4)'

const run = `${sdkName}-${process.pid}-${Date.now()}`
const created = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { run }, ...opts })
  created.push(sbx)
  return sbx
}

after(async () => {
  for (const sbx of created) {
    await Sandbox.kill(sbx.sandboxId).catch(() => {})
  }
})

// The scheme of the edge's URLs: https when the SDK is given E2B_DOMAIN
// alone (it then makes https URLs, as on E2B), http beside E2B_SANDBOX_URL.
const edgeScheme = process.env.E2B_SANDBOX_URL ? 'http' : 'https'

// E2B's control plane, where the SDK finds it: E2B_API_URL, or
// api.{E2B_DOMAIN} over https.
const apiURL = process.env.E2B_API_URL ?? `https://api.${process.env.E2B_DOMAIN}`

// A GET of a path of a getHost(port) host through the edge (*.localhost
// resolves here through resolve-localhost.mjs).
async function getThroughEdge(host, path = '/', headers = {}) {
  const res = await fetch(`${edgeScheme}://${host}${path}`, { headers })
  return { status: res.status, body: await res.text() }
}

test('create, run a command, read its result', async () => {
  const sbx = await create()
  assert.match(sbx.sandboxId, /^[0-9a-f]{20}$/, 'an E2B id has no - or _')
  const result = await sbx.commands.run('echo hello; echo oops >&2; whoami; pwd')
  assert.equal(result.exitCode, 0)
  assert.equal(result.stdout, 'hello\nuser\n/home/user\n')
  assert.equal(result.stderr, 'oops\n')

  await assert.rejects(sbx.commands.run('exit 3'), (err) => {
    assert.ok(err instanceof CommandExitError, `got ${err}`)
    assert.equal(err.exitCode, 3)
    return true
  })

  const root = await sbx.commands.run('whoami', { user: 'root', envs: { GREETING: 'hi' }, cwd: '/tmp' })
  assert.equal(root.stdout, 'root\n')
  const env = await sbx.commands.run('echo $GREETING; pwd', { envs: { GREETING: 'hi' }, cwd: '/tmp' })
  assert.equal(env.stdout, 'hi\n/tmp\n')

  // What E2B's base template offers code: sudo without a password, and
  // python as well as python3. The envs of the command before do not
  // reach this one (E2B's own test runs `sudo echo "$FOO"`).
  const base = await sbx.commands.run('sudo whoami && sudo echo "[$GREETING]" && python --version')
  assert.match(base.stdout, /^root\n\[\]\nPython 3\.\d+\.\d+\n$/)
  assert.equal(base.stderr, '')
})

test('commands: onStdout, background with wait and kill, stdin, list', async () => {
  const sbx = await create()
  const chunks = []
  const res = await sbx.commands.run('for i in 1 2 3; do echo line $i; sleep 0.1; done', {
    onStdout: (d) => chunks.push(d),
  })
  assert.equal(res.stdout, 'line 1\nline 2\nline 3\n')
  assert.equal(chunks.join(''), res.stdout)

  const bg = await sbx.commands.run('sleep 1; echo done', { background: true })
  assert.ok(bg.pid > 0)
  const done = await bg.wait()
  assert.equal(done.stdout, 'done\n')

  const long = await sbx.commands.run('sleep 300', { background: true })
  const listed = await sbx.commands.list()
  assert.ok(listed.some((p) => p.pid === long.pid), `pid ${long.pid} in ${JSON.stringify(listed)}`)
  assert.equal(await long.kill(), true)
  await assert.rejects(long.wait(), (err) => err instanceof CommandExitError)

  const cat = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'from stdin\n')
  if (sbx.commands.closeStdin) {
    await sbx.commands.closeStdin(cat.pid)
    const out = await cat.wait()
    assert.equal(out.stdout, 'from stdin\n')
  } else {
    await cat.kill()
  }
})

test('files: write, read, list, exists, rename, remove, makeDir', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/hello.txt', 'Hello, world!')
  assert.equal(await sbx.files.read('/home/user/hello.txt'), 'Hello, world!')
  await sbx.files.write('relative.txt', 'in home')
  assert.equal((await sbx.commands.run('cat /home/user/relative.txt')).stdout, 'in home')

  const bytes = new Uint8Array([0, 1, 2, 255])
  await sbx.files.write('/tmp/bin', bytes.buffer)
  assert.deepEqual(await sbx.files.read('/tmp/bin', { format: 'bytes' }), bytes)

  const many = await sbx.files.write([
    { path: '/tmp/dir/a.txt', data: 'a' },
    { path: '/tmp/dir/b.txt', data: 'b' },
  ])
  assert.equal(many.length, 2)
  const entries = await sbx.files.list('/tmp/dir')
  assert.deepEqual(entries.map((e) => e.name).sort(), ['a.txt', 'b.txt'])
  assert.equal(entries[0].type, 'file')

  assert.equal(await sbx.files.exists('/tmp/dir/a.txt'), true)
  assert.equal(await sbx.files.exists('/tmp/dir/none'), false)
  await sbx.files.rename('/tmp/dir/a.txt', '/tmp/dir/c.txt')
  assert.equal(await sbx.files.read('/tmp/dir/c.txt'), 'a')
  await sbx.files.remove('/tmp/dir/c.txt')
  assert.equal(await sbx.files.exists('/tmp/dir/c.txt'), false)

  assert.equal(await sbx.files.makeDir('/tmp/newdir/sub'), true)
  assert.equal(await sbx.files.makeDir('/tmp/newdir/sub'), false, 'an existing directory')
  const info = await sbx.files.getInfo('/tmp/newdir')
  assert.equal(info.type, 'dir')

  await assert.rejects(sbx.files.read('/tmp/missing.txt'), (err) => err instanceof NotFoundError)
})

test('files: watchDir reports writes', async () => {
  const sbx = await create()
  await sbx.files.makeDir('/tmp/watched')
  const events = []
  const handle = await sbx.files.watchDir('/tmp/watched', (e) => events.push(e))
  await sbx.files.write('/tmp/watched/new.txt', 'x')
  for (let i = 0; i < 50 && !events.some((e) => e.name === 'new.txt'); i++) {
    await new Promise((r) => setTimeout(r, 100))
  }
  await handle.stop()
  assert.ok(events.some((e) => e.name === 'new.txt'), JSON.stringify(events))
})

test('files: metadata on write, getInfo, list and rename; one set in the sandbox; an overwrite clears it', { skip: noMetadata }, async () => {
  const sbx = await create()
  const metadata = { author: 'mish', purpose: 'upload' }
  const info = await sbx.files.write('meta.txt', 'content', { metadata })
  assert.deepEqual(info.metadata, metadata)
  assert.deepEqual((await sbx.files.getInfo('meta.txt')).metadata, metadata)
  const octet = await sbx.files.write('/tmp/octet.txt', 'x', { metadata: { Mixed: 'Case' }, useOctetStream: true })
  assert.deepEqual(octet.metadata, { mixed: 'Case' }, 'keys are lower case, as envd keeps them')

  const many = await sbx.files.write([
    { path: '/tmp/meta/a.txt', data: 'a' },
    { path: '/tmp/meta/b.txt', data: 'b' },
  ], { metadata: { source: 'suite' } })
  assert.deepEqual(many.map((w) => w.metadata), [{ source: 'suite' }, { source: 'suite' }])
  const listed = await sbx.files.list('/tmp/meta')
  assert.deepEqual(listed.map((e) => [e.name, e.metadata]), [['a.txt', { source: 'suite' }], ['b.txt', { source: 'suite' }]])

  const renamed = await sbx.files.rename('meta.txt', 'renamed.txt')
  assert.deepEqual(renamed.metadata, metadata)
  await sbx.commands.run(`python3 -c "import os; os.setxattr('/home/user/renamed.txt', 'user.e2b.extra', b'set in the sandbox')"`)
  assert.deepEqual((await sbx.files.getInfo('renamed.txt')).metadata, { ...metadata, extra: 'set in the sandbox' })

  const again = await sbx.files.write('renamed.txt', 'again')
  assert.equal(again.metadata, undefined)
  assert.equal((await sbx.files.getInfo('renamed.txt')).metadata, undefined)
})

test('files: watchDir with includeEntry and allowNetworkMounts', { skip: noMetadata }, async () => {
  const sbx = await create()
  await sbx.files.makeDir('/tmp/entries')
  const events = []
  const plain = []
  const handle = await sbx.files.watchDir('/tmp/entries', (e) => events.push(e), { includeEntry: true, allowNetworkMounts: true })
  const plainHandle = await sbx.files.watchDir('/tmp/entries', (e) => plain.push(e))
  await sbx.files.write('/tmp/entries/f.txt', 'hello', { metadata: { tag: 'watched' } })
  const written = () => events.find((e) => e.type === 'write' && e.name === 'f.txt')
  for (let i = 0; i < 50 && !(written() && plain.some((e) => e.type === 'write')); i++) {
    await new Promise((r) => setTimeout(r, 100))
  }
  await handle.stop()
  await plainHandle.stop()
  const ev = written()
  assert.ok(ev, JSON.stringify(events))
  assert.equal(ev.entry?.name, 'f.txt')
  assert.equal(ev.entry?.path, '/tmp/entries/f.txt')
  assert.equal(ev.entry?.type, 'file')
  assert.equal(ev.entry?.size, 5)
  assert.deepEqual(ev.entry?.metadata, { tag: 'watched' })
  assert.ok(plain.length > 0 && plain.every((e) => e.entry === undefined), JSON.stringify(plain))
})

test('setTimeout and getInfo', async () => {
  const sbx = await create({ metadata: { run, role: 'info' } })
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.templateId, 'base')
  assert.equal(info.state, 'running')
  assert.equal(info.metadata.role, 'info')
  assert.ok(info.cpuCount > 0 && info.memoryMB > 0)
  assert.ok(info.endAt > info.startedAt)

  await sbx.setTimeout(600_000)
  const later = await sbx.getInfo()
  const left = later.endAt.getTime() - Date.now()
  assert.ok(left > 500_000 && left <= 600_000, `lease ends in ${left} ms`)
  assert.equal(await sbx.isRunning(), true)
})

test('pause, then connect: files and a background process are intact', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/state.txt', 'kept')
  const counter = await sbx.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done', { background: true })
  await new Promise((r) => setTimeout(r, 600))

  const pause = sbx.pause ?? sbx.betaPause
  await pause.call(sbx)
  assert.equal((await sbx.getInfo()).state, 'paused')
  assert.equal(await sbx.isRunning(), false)
  const listedPaused = await Sandbox.list({ query: { state: ['paused'], metadata: { run } } }).nextItems()
  assert.ok(listedPaused.some((s) => s.sandboxId === sbx.sandboxId))

  const again = await Sandbox.connect(sbx.sandboxId)
  assert.equal(again.sandboxId, sbx.sandboxId, 'the id is stable across pause and resume')
  assert.equal((await again.getInfo()).state, 'running')
  assert.equal(await again.files.read('/home/user/state.txt'), 'kept')
  const procs = await again.commands.list()
  assert.ok(procs.some((p) => p.pid === counter.pid), 'the background process survived')
  const before = Number((await again.files.read('/tmp/count')).trim())
  await new Promise((r) => setTimeout(r, 600))
  const afterCount = Number((await again.files.read('/tmp/count')).trim())
  assert.ok(afterCount > before, `the counter goes on: ${before} -> ${afterCount}`)

  const handle = await again.commands.connect(counter.pid)
  await handle.kill()

  // Connecting to a running sandbox is a no-op that keeps it running.
  const third = await Sandbox.connect(sbx.sandboxId)
  assert.equal(await third.isRunning(), true)
})

// keepMemory (pause({keepMemory}) and lifecycle.onTimeout {action,
// keepMemory}) came after 2.16.0, whose pause sends no body and whose
// create reads onTimeout as a string only: what the release's pause sends
// tells whether it has them.
const keepMemory = /keepMemory/.test(String(Sandbox.pause)) || 'this SDK release has no keepMemory (pause without memory)'

// A filesystem-only pause drops memory and processes and keeps the files:
// connect boots the sandbox afresh. tag names the marker process.
async function assertBootedCold(id, pid, tag) {
  // A timeout: the lease of the timeout test is a second, which the boot
  // starts anew, and 2.51.0 sends none of its own.
  const again = await Sandbox.connect(id, { timeoutMs: 120_000 })
  assert.equal(again.sandboxId, id, 'the id is stable across the pause and the boot')
  assert.equal((await again.getInfo()).state, 'running')
  assert.equal(await again.files.read('/home/user/state.txt'), 'kept')
  const procs = await again.commands.list()
  assert.ok(!procs.some((p) => p.pid === pid || p.cmd.includes(tag) || (p.args ?? []).join(' ').includes(tag)),
    `the background process is gone: ${JSON.stringify(procs)}`)
  const ps = await again.commands.run(`for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done | grep -c '${tag.slice(0, -1)}[${tag.slice(-1)}]' || true`)
  assert.equal(ps.stdout.trim(), '0', `processes running ${tag} after the boot`)
}

test('pause({keepMemory: false}), then connect: files kept, a background process gone', { skip: keepMemory !== true && keepMemory }, async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/state.txt', 'kept')
  const bg = await sbx.commands.run('sleep 1001', { background: true })
  assert.equal(await sbx.pause({ keepMemory: false }), true)
  assert.equal((await sbx.getInfo()).state, 'paused')
  assert.equal(await sbx.isRunning(), false)
  await assertBootedCold(sbx.sandboxId, bg.pid, 'sleep 1001')
})

test('lifecycle onTimeout {action: pause, keepMemory: false}: the timeout keeps the files, connect boots afresh', { skip: keepMemory !== true && keepMemory }, async () => {
  const sbx = await create({ lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } })
  assert.deepEqual((await sbx.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: false })
  await sbx.files.write('/home/user/state.txt', 'kept')
  const bg = await sbx.commands.run('sleep 1002', { background: true })
  await sbx.setTimeout(1000) // the lease ends in a second, once the file and the process are there
  let info
  for (let i = 0; i < 150; i++) {
    info = await sbx.getInfo()
    if (info.state === 'paused') break
    await new Promise((r) => setTimeout(r, 200))
  }
  assert.equal(info.state, 'paused', 'the timeout paused it')
  await assertBootedCold(sbx.sandboxId, bg.pid, 'sleep 1002')
  // E2B's SDK refuses auto-resume with it before asking; the server
  // refuses the request such a check would have stopped, saying what to do.
  const res = await fetch(`${apiURL}/sandboxes`, {
    method: 'POST',
    headers: { 'X-API-KEY': process.env.E2B_API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } }),
  })
  const refusal = await res.json()
  assert.equal(res.status, 400, JSON.stringify(refusal))
  assert.equal(refusal.code, 400)
  assert.match(refusal.message, /Sandbox\.connect\(\)/)
})

test('auto-resume: a command wakes a paused sandbox', async () => {
  const sbx = await create({ lifecycle: { onTimeout: 'pause', autoResume: true } })
  await sbx.files.write('/tmp/x', 'before')
  await sbx.pause()
  const res = await sbx.commands.run('cat /tmp/x')
  assert.equal(res.stdout, 'before')
  assert.equal((await sbx.getInfo()).state, 'running')
})

test('a paused sandbox without auto-resume refuses commands with a clear error', async () => {
  const sbx = await create()
  await sbx.pause()
  await assert.rejects(sbx.commands.run('true'), (err) => {
    assert.ok(err instanceof SandboxError || err instanceof TimeoutError, `got ${err}`)
    assert.match(err.message, /auto.?resume|paused/i)
    return true
  })
})

test('Sandbox.list pages through 5 sandboxes 2 at a time', async () => {
  const tag = `${run}-list`
  const ids = []
  for (let i = 0; i < 5; i++) {
    ids.push((await create({ metadata: { run, list: tag } })).sandboxId)
  }
  const paginator = Sandbox.list({ limit: 2, query: { metadata: { list: tag } } })
  const seen = []
  const pages = []
  while (paginator.hasNext) {
    const items = await paginator.nextItems()
    pages.push(items.length)
    seen.push(...items.map((s) => s.sandboxId))
  }
  assert.deepEqual(seen.sort(), ids.sort())
  assert.ok(pages.every((n) => n <= 2), `pages ${pages}`)
  assert.ok(pages.length >= 3, `pages ${pages}`)
})

test('getHost(port) reaches a server in the sandbox through the edge', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/site/index.html', 'served by the sandbox')
  await sbx.commands.run('cd /home/user/site && python3 -m http.server 8000', { background: true })
  const host = sbx.getHost(8000)
  assert.equal(host, `8000-${sbx.sandboxId}.${process.env.E2B_DOMAIN}`)
  let res
  for (let i = 0; i < 50; i++) {
    res = await getThroughEdge(host, '/index.html')
    if (res.status === 200) break
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.equal(res.status, 200)
  assert.equal(res.body, 'served by the sandbox')
})

test('kill, then the sandbox is gone', async () => {
  const sbx = await create()
  const host = sbx.getHost(3000)
  await sbx.kill()
  // E2B's answer on a gone sandbox's host: 502 and its body.
  const gone = await getThroughEdge(host)
  assert.equal(gone.status, 502)
  const body = JSON.parse(gone.body)
  assert.equal(body.message, 'The sandbox was not found')
  assert.equal(body.code, 502)
  assert.ok(sbx.sandboxId.startsWith(body.sandboxId), JSON.stringify(body))
  await assert.rejects(sbx.getInfo(), (err) => err instanceof NotFoundError || /not found/i.test(err.message))
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  await assert.rejects(Sandbox.connect('0123456789abcdef0123'), (err) => /not found/i.test(err.message))
  await assert.rejects(Sandbox.connect('not-an-id'), (err) => /not found/i.test(err.message))
})

test('a command stream past its timeoutMs ends with a TimeoutError; the process runs on', async () => {
  const sbx = await create()
  await assert.rejects(sbx.commands.run('sleep 5; echo late > /tmp/late', { timeoutMs: 1000 }), (err) => {
    assert.ok(err instanceof TimeoutError, `got ${err}`)
    return true
  })
  await new Promise((r) => setTimeout(r, 5000))
  assert.equal(await sbx.files.read('/tmp/late'), 'late\n')
})

test('snapshots: createSnapshot, then Sandbox.create from it; listSnapshots', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/snap.txt', 'from the snapshot')
  await sbx.commands.run('echo 41 > /tmp/n')
  const snap = await sbx.createSnapshot()
  assert.match(snap.snapshotId, /^snp_/)
  assert.equal((await sbx.getInfo()).state, 'running', 'the source keeps running')

  const fromSnap = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000, metadata: { run } })
  created.push(fromSnap)
  assert.notEqual(fromSnap.sandboxId, sbx.sandboxId)
  assert.equal(await fromSnap.files.read('/home/user/snap.txt'), 'from the snapshot')

  const listed = []
  const paginator = Sandbox.listSnapshots({ sandboxId: sbx.sandboxId })
  while (paginator.hasNext) listed.push(...(await paginator.nextItems()))
  assert.ok(listed.some((s) => s.snapshotId === snap.snapshotId), JSON.stringify(listed))
  // A snapshot that a live sandbox was made from is not deleted under it.
  await assert.rejects(Sandbox.deleteSnapshot(snap.snapshotId), (err) => /in use/.test(err.message))
  await fromSnap.kill()
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false, 'a deleted snapshot is not found')
})

test('named snapshots: createSnapshot({name}), listSnapshots({name}), Sandbox.create(name), deleteSnapshot(name)', {
  skip: !atLeast('2.34.0') && `e2b ${sdkVersion} has no snapshot names (createSnapshot's name came in 2.20, listSnapshots' name filter in 2.34)`,
}, async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/named.txt', 'named')
  const name = `snap-${sdkName}-${process.pid}`
  const snap = await sbx.createSnapshot({ name })
  assert.match(snap.snapshotId, /^snp_/)
  assert.ok(snap.names.some((n) => n.includes(name)), JSON.stringify(snap))
  // The name stays this snapshot's until it is deleted.
  await assert.rejects(sbx.createSnapshot({ name }), (err) => /already exists/.test(err.message))

  const found = await Sandbox.listSnapshots({ name }).nextItems()
  assert.deepEqual(found.map((s) => s.snapshotId), [snap.snapshotId])
  assert.ok(found[0].names.includes(name), JSON.stringify(found))
  assert.deepEqual(await Sandbox.listSnapshots({ name: `${name}-does-not-exist` }).nextItems(), [])

  // E2B's snapshot names are template names.
  const fromName = await Sandbox.create(name, { timeoutMs: 120_000, metadata: { run } })
  created.push(fromName)
  assert.equal(await fromName.files.read('/home/user/named.txt'), 'named')
  await fromName.kill()

  assert.equal(await Sandbox.deleteSnapshot(name), true)
  assert.equal(await Sandbox.deleteSnapshot(name), false, 'a deleted name is not found')
  assert.deepEqual(await Sandbox.listSnapshots({ name }).nextItems(), [], 'a deleted name is free')
})

test('fork: children with the parent\'s memory and files', { skip: typeof Sandbox.fork !== 'function' && 'this SDK release has no fork' }, async () => {
  const sbx = await create()
  await sbx.commands.run('echo parent > /tmp/who')
  const kids = await sbx.fork({ count: 2 })
  assert.equal(kids.length, 2)
  for (const kid of kids) {
    assert.ok(!(kid instanceof Error), `fork failed: ${kid}`)
    created.push(kid)
    assert.notEqual(kid.sandboxId, sbx.sandboxId)
    assert.equal(await kid.files.read('/tmp/who'), 'parent\n')
  }
})

test('pty: a terminal with input, resize and exit', async () => {
  const sbx = await create()
  let out = ''
  const decoder = new TextDecoder()
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (out += decoder.decode(d)) })
  const until = async (re) => {
    for (let i = 0; i < 100 && !re.test(out); i++) await new Promise((r) => setTimeout(r, 50))
    assert.match(out, re)
  }
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo $((6*7))\n'))
  await until(/42/)
  await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'))
  await until(/30 100/)
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('exit 0\n'))
  const res = await pty.wait()
  assert.equal(res.exitCode, 0)
})

test('a dropped command stream is reconnected with commands.connect', async () => {
  const sbx = await create()
  const cmd = await sbx.commands.run('sleep 1; echo after', { background: true })
  await cmd.disconnect()
  const again = await sbx.commands.connect(cmd.pid)
  const res = await again.wait()
  assert.equal(res.stdout, 'after\n')
})

test('a command whose sandbox is killed under it ends with a TimeoutError in E2B\'s words', async () => {
  const sbx = await create()
  const cmd = await sbx.commands.run('sleep 60', { background: true })
  await sbx.kill()
  const err = await cmd.wait().catch((e) => e)
  assert.ok(err instanceof TimeoutError, `got ${err}`)
  assert.match(err.message, /sandbox was killed or reached its end of life/)
})

test('allowPublicTraffic: false: the ports open to the trafficAccessToken', async () => {
  const sbx = await create({ network: { allowPublicTraffic: false } })
  assert.ok(sbx.trafficAccessToken, 'a private sandbox has a traffic access token')
  await sbx.commands.run('cd /tmp && python3 -m http.server 8080', { background: true })
  const host = sbx.getHost(8080)
  let res
  for (let i = 0; i < 50; i++) {
    res = await getThroughEdge(host, '/', { 'e2b-traffic-access-token': sbx.trafficAccessToken })
    if (res.status === 200) break
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.equal(res.status, 200)
  assert.equal((await getThroughEdge(host)).status, 403, 'no token')
  assert.equal((await getThroughEdge(host, '/', { 'e2b-traffic-access-token': 'wrong' })).status, 403, 'a wrong token')
  const open = await create()
  assert.equal(open.trafficAccessToken, undefined, 'a public sandbox has none')
})

test('signed download and upload URLs', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/dl.txt', 'signed bytes')
  // With E2B_SANDBOX_URL the URL names no sandbox by its host: the header
  // does. With E2B_DOMAIN alone the URL is the sandbox's own host.
  const headers = process.env.E2B_SANDBOX_URL ? { 'E2b-Sandbox-Id': sbx.sandboxId } : {}
  const dl = await sbx.downloadUrl('/home/user/dl.txt', { useSignatureExpiration: 60 })
  const got = await fetch(dl, { headers })
  assert.equal(got.status, 200)
  assert.equal(await got.text(), 'signed bytes')

  const forged = new URL(dl)
  forged.searchParams.set('path', '/etc/shadow')
  assert.equal((await fetch(forged, { headers })).status, 401, 'a signature is for its path only')

  const ul = await sbx.uploadUrl('/home/user/ul.txt')
  const form = new FormData()
  form.append('file', new Blob(['uploaded']), 'ul.txt')
  const put = await fetch(ul, { method: 'POST', body: form, headers })
  assert.equal(put.status, 200)
  assert.equal(await sbx.files.read('/home/user/ul.txt'), 'uploaded')

  // Expired and forged: 401 with E2B's envd's own bodies.
  const expired = await fetch(await sbx.downloadUrl('/home/user/dl.txt', { useSignatureExpiration: -10_000 }), { headers })
  assert.equal(expired.status, 401)
  assert.deepEqual(await expired.json(), { code: 401, message: 'signature is already expired' })
  const bad = new URL(dl)
  bad.searchParams.set('signature', 'v1_forged')
  const refused = await fetch(bad, { headers })
  assert.equal(refused.status, 401)
  assert.deepEqual(await refused.json(), { code: 401, message: 'invalid signature' })
})

test('getMetrics', async () => {
  const sbx = await create()
  let metrics = []
  for (let i = 0; i < 40 && metrics.length === 0; i++) {
    metrics = await sbx.getMetrics()
    if (metrics.length === 0) await new Promise((r) => setTimeout(r, 250))
  }
  assert.ok(metrics.length > 0, 'samples arrive')
  assert.ok(metrics[0].cpuCount > 0 && metrics[0].memTotal > 0, JSON.stringify(metrics[0]))
})
