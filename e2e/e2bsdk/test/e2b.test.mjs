// E2B's own documented examples, run with E2B's unmodified JavaScript SDK
// against a Nullspace server's E2B-compatible API (serve --e2b-compat).
// e2e TestE2BSDK runs this file once per pinned SDK release (E2B_SDK names
// the npm alias: e2b-latest, e2b-validating or e2b-older) with E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY and E2B_DOMAIN set, as `nullspace e2b env`
// prints them.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'

const sdkName = process.env.E2B_SDK ?? 'e2b-latest'
const { Sandbox, CommandExitError, NotFoundError, TimeoutError, SandboxError } = await import(sdkName)

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

// A GET of a URL's path through the edge with the Host header getHost
// gives: glibc (so Node) does not resolve *.localhost by itself.
function getThroughEdge(host, path = '/') {
  const [hostname, port] = process.env.E2B_DOMAIN.split(':')
  return new Promise((resolve, reject) => {
    const req = http.get({ host: hostname === 'localhost' ? '127.0.0.1' : hostname, port, path, headers: { Host: host } }, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
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
  await sbx.kill()
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

test('signed download and upload URLs', async () => {
  const sbx = await create()
  await sbx.files.write('/home/user/dl.txt', 'signed bytes')
  const headers = { 'E2b-Sandbox-Id': sbx.sandboxId }
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
