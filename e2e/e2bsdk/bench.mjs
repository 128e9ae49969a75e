// The E2B compatibility benchmark (make bench BENCH_FLAGS='-suite e2b'), in
// one Node process, alternating which side goes first:
//
//   - e2b_sdk: E2B's SDK (e2b-latest) against the E2B-compatible API;
//   - typescript_sdk: Nullspace's TypeScript SDK against the Nullspace API;
//   - e2b_wire and nullspace_wire: a command's round trip as one bare
//     fetch of each protocol (envd's Connect stream process.Process/Start;
//     POST /v1/machines/{id}/commands), which is what the server adds,
//     without either SDK's own client-side work.
//
// The SDK sides run the same program as the same user: E2B's SDK runs a
// command as `/bin/bash -l -c CMD` as user, whose start (~45 ms, with a
// spread of several) dominates. The wire sides run /bin/true as user, so
// that what the protocols cost shows. Prints one JSON sample per line:
// {metric, side, ms}.
//
//   node bench.mjs -n 20 --template base
import { parseArgs } from 'node:util'
import { Sandbox } from 'e2b-latest'
import { Machine } from '../../sdk/typescript/dist/esm/index.js'

const { values } = parseArgs({ options: { n: { type: 'string', default: '10' }, template: { type: 'string', default: 'base' } } })
const n = Number(values.n)
const template = values.template
const bashTrue = ['/bin/bash', '-l', '-c', 'true']
const binTrue = ['/bin/true']
const roundTrips = 5

let warm = true
const emit = (metric, side, ms) => warm || console.log(JSON.stringify({ metric, side, ms }))
const timed = async (f) => {
  const t0 = performance.now()
  const v = await f()
  return [performance.now() - t0, v]
}

// envdStart is process.Process/Start as one fetch: a Connect stream, its
// request one JSON envelope, read to its end.
async function envdStart(sandboxId, token) {
  const msg = Buffer.from(JSON.stringify({ process: { cmd: binTrue[0] }, stdin: false }))
  const head = Buffer.alloc(5)
  head.writeUInt32BE(msg.length, 1)
  const res = await fetch(`${process.env.E2B_SANDBOX_URL}/process.Process/Start`, {
    method: 'POST',
    body: Buffer.concat([head, msg]),
    headers: { 'Content-Type': 'application/connect+json', 'E2b-Sandbox-Id': sandboxId, 'X-Access-Token': token },
  })
  const body = Buffer.from(await res.arrayBuffer())
  if (res.status !== 200 || !body.includes('"end"')) throw new Error(`Start: ${res.status} ${body}`)
}

async function apiRun(id) {
  const res = await fetch(`${process.env.NULLSPACE_API_URL}/v1/machines/${id}/commands`, {
    method: 'POST',
    body: JSON.stringify({ cmd: binTrue, user: 'user' }),
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${process.env.NULLSPACE_API_KEY}` },
  })
  const out = await res.json()
  if (res.status !== 200 || out.exit_code !== 0) throw new Error(`run: ${res.status} ${JSON.stringify(out)}`)
}

const sides = {
  e2b_sdk: async () => {
    const [ms, sbx] = await timed(async () => {
      const s = await Sandbox.create(template, { timeoutMs: 120_000 })
      await s.commands.run('true')
      return s
    })
    emit('create_first_command', 'e2b_sdk', ms)
    const info = await fetch(`${process.env.E2B_API_URL}/sandboxes/${sbx.sandboxId}`, { headers: { 'X-API-KEY': process.env.E2B_API_KEY } })
    const token = (await info.json()).envdAccessToken
    for (let i = 0; i < roundTrips; i++) {
      emit('exec_round_trip', 'e2b_sdk', (await timed(() => sbx.commands.run('true')))[0])
      emit('exec_round_trip', 'e2b_wire', (await timed(() => envdStart(sbx.sandboxId, token)))[0])
    }
    await sbx.kill()
  },
  typescript_sdk: async () => {
    const [ms, m] = await timed(async () => {
      const m = await Machine.create({ template, timeout: 120 })
      await m.commands.run(bashTrue, { user: 'user' })
      return m
    })
    emit('create_first_command', 'typescript_sdk', ms)
    for (let i = 0; i < roundTrips; i++) {
      emit('exec_round_trip', 'typescript_sdk', (await timed(() => m.commands.run(bashTrue, { user: 'user' })))[0])
      emit('exec_round_trip', 'nullspace_wire', (await timed(() => apiRun(m.id)))[0])
    }
    await m.kill()
  },
}

// One warm-up of each, not reported: the first calls open connections and
// load modules.
await sides.e2b_sdk()
await sides.typescript_sdk()
warm = false
for (let i = 0; i < n; i++) {
  const order = i % 2 === 0 ? ['e2b_sdk', 'typescript_sdk'] : ['typescript_sdk', 'e2b_sdk']
  for (const side of order) await sides[side]()
}
