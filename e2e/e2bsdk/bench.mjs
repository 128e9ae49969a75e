// The E2B compatibility benchmark (make bench BENCH_FLAGS='-suite e2b'):
// the same calls through E2B's SDK (e2b-latest, via the E2B-compatible API)
// and through Nullspace's TypeScript SDK (sdk/typescript, via the Nullspace
// API), in one process, alternating which goes first. Both run the same
// program as the same user: E2B's SDK runs a command as `/bin/bash -l -c
// CMD` as user, so ours is given that argv and user. Prints one JSON sample per line: {metric, side, ms}.
//
//   node bench.mjs -n 20 --template base
import { parseArgs } from 'node:util'
import { Sandbox } from 'e2b-latest'
import { Machine } from '../../sdk/typescript/dist/esm/index.js'

const { values } = parseArgs({ options: { n: { type: 'string', default: '10' }, template: { type: 'string', default: 'base' } } })
const n = Number(values.n)
const template = values.template
const bashTrue = ['/bin/bash', '-l', '-c', 'true']
const roundTrips = 5

let warm = true
const emit = (metric, side, ms) => warm || console.log(JSON.stringify({ metric, side, ms }))
const timed = async (f) => {
  const t0 = performance.now()
  const v = await f()
  return [performance.now() - t0, v]
}

const sides = {
  e2b_sdk: async () => {
    const [ms, sbx] = await timed(async () => {
      const s = await Sandbox.create(template, { timeoutMs: 120_000 })
      await s.commands.run('true')
      return s
    })
    emit('create_first_command', 'e2b_sdk', ms)
    for (let i = 0; i < roundTrips; i++) {
      emit('exec_round_trip', 'e2b_sdk', (await timed(() => sbx.commands.run('true')))[0])
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
