// Resolves *.localhost to 127.0.0.1 in this Node process, as curl and
// browsers do (RFC 6761) and glibc does not: a stand-in for the wildcard
// DNS name a real deployment gives the edge. Loaded with --import; E2B's
// SDK is not touched.
import dns from 'node:dns'

const lookup = dns.lookup
dns.lookup = function (host, opts, cb) {
  if (typeof host === 'string' && (host === 'localhost' || host.endsWith('.localhost'))) {
    if (typeof opts === 'function') {
      cb = opts
      opts = {}
    }
    if (typeof opts === 'number') opts = { family: opts }
    if (opts?.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }])
    return process.nextTick(cb, null, '127.0.0.1', 4)
  }
  return lookup.call(this, host, opts, cb)
}
