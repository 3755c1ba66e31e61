// A real IPFS client fetching one file of a package by CID through one trustless gateway.
//
//   node verified_fetch.mjs GATEWAY_URL CID[/PATH] OUT
//
// @helia/verified-fetch on a Helia node built by hand so that it can only ask GATEWAY_URL:
// no libp2p, no bitswap, no delegated routing; one router (from @helia/fallback-router) that
// names the gateway as the provider of every CID, and one block broker
// (@helia/trustless-gateway-client) that fetches blocks from it (?format=raw, Accept:
// application/vnd.ipld.raw) and checks each against its CID. The body is written to OUT.
//
// Every outgoing TCP connection and DNS lookup goes through a guard: anything but loopback is
// refused, and so is any UDP socket (the script then fails). The addresses connected to are
// printed as JSON on stdout,
// {"connections": ["127.0.0.1:PORT", ...], "status": 200, "bytes": N}, for the test to check.
// A non-2xx answer, an error or a fetch that never settles (every block refused) exits 1 with
// the reason on stderr; with DEBUG=helia:trustless-gateway*:error the client's own refusals
// (InvalidMultihashError: the hash of a downloaded block did not match its CID) show there too.
import dgram from 'node:dgram'
import dns from 'node:dns'
import net from 'node:net'
import { writeFile } from 'node:fs/promises'
import { syncBuiltinESMExports } from 'node:module'

// Node 20 lacks Promise.withResolvers, which the libraries use (Node 22 has it).
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost'])
const connections = []
const refused = []

const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  // net.connect() passes its normalized [options, callback] here; a direct call, its arguments
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]
  const opts = typeof first === 'object' && first !== null
    ? first : { port: first, host: typeof args[1] === 'string' ? args[1] : 'localhost' }
  const host = opts.host ?? 'localhost'
  if (opts.path == null) {
    if (!LOOPBACK.has(host)) {
      refused.push(`${host}:${opts.port}`)
      throw new Error(`refused a connection to ${host}:${opts.port}: loopback only`)
    }
    connections.push(`${host}:${opts.port}`)
  }
  return connect.apply(this, args)
}
for (const name of ['lookup', 'resolve', 'resolve4', 'resolve6', 'resolveAny', 'resolveTxt']) {
  const real = dns[name]
  dns[name] = function (host, ...rest) {
    if (!LOOPBACK.has(host)) {
      refused.push(`dns:${host}`)
      throw new Error(`refused a DNS query for ${host}: loopback only`)
    }
    return real.call(this, host, ...rest)
  }
}

// Nothing here should speak UDP (no libp2p, no mDNS, no DNS of its own): any socket is refused.
dgram.createSocket = function (type) {
  refused.push(`udp:${typeof type === 'string' ? type : type?.type}`)
  throw new Error('refused a UDP socket: this client must only speak HTTP to the gateway')
}

syncBuiltinESMExports() // so that `import { lookup } from 'node:dns'` gets the guards too

const [gateway, path, out] = process.argv.slice(2)
const { createHeliaLight } = await import('helia')
const { trustlessGatewayBlockBroker } = await import('@helia/trustless-gateway-client')
const { fallbackRouter } = await import('@helia/fallback-router')
const { createVerifiedFetch } = await import('@helia/verified-fetch')

// fallback-router names the gateway as the provider of every CID, but Helia only asks a
// 'fallback' router after the others, and with no other router its query never ends (the
// process exits with an unsettled promise): give it to Helia as an ordinary router.
const named = fallbackRouter({ gateways: [gateway], shuffle: false })
const onlyTheGateway = {
  name: 'treeseed-gateway',
  findProviders: (cid, options) => named.findProviders(cid, options)
}
const helia = await createHeliaLight({
  blockBrokers: [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })],
  routers: [onlyTheGateway]
})
await helia.start()
const verifiedFetch = await createVerifiedFetch(helia)
// When every block the gateway sends fails its CID check, the trustless-gateway session keeps
// waiting for another provider and the event loop empties with the fetch still pending: Node
// would exit 13 ("unsettled top-level await"). Say so, as a failure of our own.
let settled = false
process.on('exit', () => {
  if (!settled) {
    console.log(JSON.stringify({ connections, refused, status: null, stalled: true }))
    process.stderr.write('verified-fetch never answered: no provider gave a block that matched its CID (or every connection was refused)\n')
    process.exitCode = 1
  }
})
let code = 0
try {
  const response = await verifiedFetch(`ipfs://${path}`, { signal: AbortSignal.timeout(300_000) })
  const body = new Uint8Array(await response.arrayBuffer())
  if (!response.ok) {
    process.stderr.write(`verified-fetch answered ${response.status}: ${new TextDecoder().decode(body)}\n`)
    code = 1
  } else {
    await writeFile(out, body)
  }
  console.log(JSON.stringify({ connections, refused, status: response.status, bytes: body.length }))
} catch (err) {
  process.stderr.write(`verified-fetch failed: ${err?.stack ?? err}\n`)
  console.log(JSON.stringify({ connections, refused, status: null }))
  code = 1
} finally {
  settled = true
  await verifiedFetch.stop()
  await helia.stop()
}
if (refused.length > 0) code = 1
process.exit(code)
