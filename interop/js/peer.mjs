// A small js-libp2p 2.x peer that speaks ecac's wire protocol (docs/protocol.md), for the interop
// test tests/interop/test_js_interop.py. One JSON line per event on stdout; commands are JSON lines
// on stdin; stdin EOF stops the process (so it never outlives the test).
//
//   node peer.mjs --project P [--listen /ip4/127.0.0.1/tcp/0] [--dial MADDR]... [--ops LOG.cbor]
//                 [--nodes N] [--heartbeat-ms 200]
//   node peer.mjs --op-ids LOG.cbor      (offline: print the op ids of a log as this peer computes them)
//   node peer.mjs --announce-vector      (offline: sign the docs/protocol.md §3.2 announce vector)
//
// Commands: {"cmd":"publish"} {"cmd":"fetch","peer":ID} {"cmd":"dial","addr":MADDR} {"cmd":"ping","peer":ID}
// each optionally with "node": i (default 0). The identity seed comes from ECAC_JS_SEED_HEX (else random):
// never a secret on a command line.
import './node20.mjs' // must stay the first import
import { createInterface } from 'node:readline'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { TopicValidatorResult } from '@libp2p/interface'
import { ed25519 } from '@noble/curves/ed25519'
import { blake3 } from '@noble/hashes/blake3'
import { encode as cborEncode, decode as cborDecode } from 'cborg'

const SYNC = '/ecac/sync/1'
const MAX_REQUEST_FRAME = 64 * 1024
const MAX_FRAME = 8 * 1024 * 1024
const MAX_ANNOUNCE_BYTES = 65536
const OP_DOMAIN = new TextEncoder().encode('ECAC_OP_V1')

const out = (obj) => process.stdout.write(JSON.stringify(obj, (k, v) => typeof v === 'bigint' ? Number(v) : v) + '\n')
const hex = (b) => Buffer.from(b).toString('hex')
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'))
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])
function concat (parts) {
  const r = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) { r.set(p, o); o += p.length }
  return r
}

// ---- canonical CBOR (docs/protocol.md §2): maps in declaration order, bytes as arrays of uints ----
const enc = (v) => cborEncode(v, { mapSorter: null })
const STRICT = { strict: true, allowIndefinite: false, allowUndefined: false, allowNaN: false, allowInfinity: false,
  rejectDuplicateMapKeys: true, useMaps: true }
/** Strict decode: one item, re-encoded byte for byte (rejects every malleability, like ecac's codec). */
function strictDecode (bytes, what) {
  const v = cborDecode(bytes, STRICT)
  if (!eq(enc(v), bytes)) throw new Error(`${what}: not the canonical encoding`)
  return v
}
function fields (m, names, what) {
  if (!(m instanceof Map) || !eq([...m.keys()], names)) throw new Error(`${what}: expected map with keys ${names}`)
  return names.map((n) => m.get(n))
}
function bytesOf (v, what, len) {
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0 && x < 256)) throw new Error(`${what}: not an array of bytes`)
  if (len !== undefined && v.length !== len) throw new Error(`${what}: ${v.length} bytes, expected ${len}`)
  return Uint8Array.from(v)
}
const arr = (b) => Array.from(b)
const frame = (body) => { const f = new Uint8Array(4 + body.length); new DataView(f.buffer).setUint32(0, body.length); f.set(body, 4); return f }

// ---- ops (core §4): id = BLAKE3("ECAC_OP_V1" ‖ cbor(header)), signature over the id ----
function parseOp (bytes) {
  const [header, sig, opId] = fields(strictDecode(bytes, 'op'), ['header', 'sig', 'op_id'], 'op')
  const [parents, hlc, author] = fields(header, ['parents', 'hlc', 'author_pk', 'payload'], 'op header')
  const [ms, logical, node] = fields(hlc, ['physical_ms', 'logical', 'node_id'], 'hlc')
  const id = bytesOf(opId, 'op_id', 32)
  const computed = blake3(concat([OP_DOMAIN, enc(header)]))
  if (!eq(computed, id)) throw new Error(`op ${hex(id)}: op_id mismatch (computed ${hex(computed)})`)
  const pk = bytesOf(author, 'author_pk', 32)
  if (!ed25519.verify(bytesOf(sig, 'sig', 64), id, pk)) throw new Error(`op ${hex(id)}: invalid signature`)
  const parentIds = parents.map((p) => hex(bytesOf(p, 'parent', 32)))
  return { id: hex(id), bytes, parents: parentIds, key: [BigInt(ms), BigInt(logical), BigInt(node), hex(id)] }
}
const cmpKey = (a, b) => { for (let i = 0; i < 4; i++) { if (a[i] < b[i]) return -1; if (a[i] > b[i]) return 1 } return 0 }
/** An op log as ecac writes it (opcodec.encode_ops): a CBOR array of canonical ops, parent-first. */
function readLog (path) {
  const items = cborDecode(readFileSync(path), STRICT)
  if (!Array.isArray(items)) throw new Error(`${path}: not a CBOR array of ops`)
  return items.map((m) => parseOp(enc(m)))
}

/** The ops this peer holds (parent-first insertion order), with gens, heads and announce fields. */
class OpSet {
  constructor () { this.ops = new Map(); this.gen = new Map(); this.children = new Set() }
  add (op) {
    if (this.ops.has(op.id)) return false
    for (const p of op.parents) if (!this.ops.has(p)) throw new Error(`op ${op.id} before its parent ${p}`)
    this.ops.set(op.id, op)
    this.gen.set(op.id, op.parents.reduce((g, p) => Math.max(g, this.gen.get(p) + 1), 0))
    for (const p of op.parents) this.children.add(p)
    return true
  }
  heads (k) { // store §1.7: ops without a child, largest key first
    const heads = [...this.ops.values()].filter((o) => !this.children.has(o.id))
    return heads.sort((a, b) => cmpKey(b.key, a.key)).slice(0, k).map((o) => o.id)
  }
  ancestors (ids) { // ancestors-or-self of the held ids among `ids`
    const seen = new Set(); const stack = ids.filter((i) => this.ops.has(i))
    while (stack.length) { const i = stack.pop(); if (seen.has(i)) continue; seen.add(i); stack.push(...this.ops.get(i).parents) }
    return seen
  }
  bloom16 () { // store §1.8: 3 lanes of BLAKE3(id) over the last 256 ids, little-endian u16
    let v = 0
    for (const id of [...this.ops.keys()].slice(-256)) {
      const h = blake3(unhex(id))
      for (const j of [0, 2, 4]) v |= 1 << ((h[j] | h[j + 1] << 8) % 16)
    }
    return [v & 0xff, v >> 8]
  }
  /** syncserve.response_set: anc(want) − anc(boundary), sorted by (gen, key), capped. */
  responseSet (want, boundary, maxOps) {
    const have = this.ancestors(boundary)
    const wanted = want.length ? this.ancestors(want) : new Set(this.ops.keys())
    const s = [...wanted].filter((i) => !have.has(i)).map((i) => this.ops.get(i))
    s.sort((a, b) => (this.gen.get(a.id) - this.gen.get(b.id)) || cmpKey(a.key, b.key))
    const cap = maxOps > 0 ? Math.min(maxOps, 65536) : 65536
    return { ops: s.slice(0, cap), more: s.length > cap }
  }
}

// ---- announces (§3.1–3.2) ----
function signedAnnounce (seed, vk, store) {
  const announce = new Map([['node_id', arr(blake3(vk))], ['topo_watermark', store.ops.size],
    ['head_ids', store.heads(16).map((h) => arr(unhex(h)))], ['bloom16', store.bloom16()]])
  const sig = ed25519.sign(blake3(enc(announce)), seed)
  return enc(new Map([['announce', announce], ['sig', arr(sig)], ['vk', arr(vk)]]))
}
/** The topic validator of §3.2, rules 1–8 in order; returns the announce or throws with the rule. */
function validateAnnounce (data, originatorVk) {
  if (data.length > MAX_ANNOUNCE_BYTES) throw new Error('announce over 65536 bytes')
  const [announce, sigV, vkV] = fields(strictDecode(data, 'SignedAnnounce'), ['announce', 'sig', 'vk'], 'SignedAnnounce')
  const [nodeId, watermark, heads, bloom] = fields(announce, ['node_id', 'topo_watermark', 'head_ids', 'bloom16'], 'Announce')
  const sig = bytesOf(sigV, 'sig'); const vk = bytesOf(vkV, 'vk')
  if (sig.length !== 64) throw new Error(`sig must be 64 bytes, got ${sig.length}`)
  let point
  try { point = vk.length === 32 && ed25519.ExtendedPoint.fromHex(vk, false) } catch { point = null }
  if (!point || point.isSmallOrder()) throw new Error('vk is not a valid Ed25519 public key')
  if (!eq(bytesOf(nodeId, 'node_id', 32), blake3(vk))) throw new Error('node_id is not BLAKE3(vk)')
  if (!Array.isArray(heads) || heads.length > 64) throw new Error('more than 64 head_ids')
  const headIds = heads.map((h) => hex(bytesOf(h, 'head_id', 32))); bytesOf(bloom, 'bloom16', 2)
  if (originatorVk && !eq(originatorVk, vk)) throw new Error("vk is not the gossip originator's key")
  if (!ed25519.verify(sig, blake3(enc(announce)), vk)) throw new Error('bad signature')
  return { node_id: hex(nodeId), topo_watermark: watermark, head_ids: headIds, vk: hex(vk) }
}

// ---- /ecac/sync/1 framing (§4) ----
async function * readFrames (source, maxFrame) {
  let buf = new Uint8Array(0)
  for await (const chunk of source) {
    buf = concat([buf, chunk.subarray()])
    while (buf.length >= 4) {
      const n = new DataView(buf.buffer, buf.byteOffset).getUint32(0)
      if (n > maxFrame) throw new Error(`frame of ${n} bytes exceeds the ${maxFrame}-byte limit`)
      if (buf.length < 4 + n) break
      yield buf.slice(4, 4 + n); buf = buf.slice(4 + n)
    }
  }
  if (buf.length) throw new Error(`stream truncated inside a frame (${buf.length} bytes)`)
}
const idList = (ids) => ids.map((i) => arr(unhex(i)))
const syncRequest = (want, boundary, maxOps) =>
  frame(enc(new Map([['want', idList(want)], ['boundary', idList(boundary)], ['max_ops', maxOps]])))

class Peer {
  constructor (index, seed, opts) {
    Object.assign(this, { index, seed, opts, store: new OpSet() })
    this.vk = ed25519.getPublicKey(seed)
  }
  emit (obj) { out({ node: this.index, ...obj }) }

  async start () {
    const o = this.opts
    const gs = gossipsub({ D: 6, Dlo: 4, Dhi: 12, mcacheLength: 5, mcacheGossip: 3, seenTTL: 120000,
      heartbeatInterval: o.heartbeatMs, globalSignaturePolicy: 'StrictSign', msgIdFn: (m) => blake3(m.data),
      allowPublishToZeroTopicPeers: true, ignoreDuplicatePublishError: true, emitSelf: false })
    this.node = await createLibp2p({ privateKey: await generateKeyPairFromSeed('Ed25519', this.seed),
      addresses: { listen: o.listen }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()],
      services: { identify: identify(), ping: ping(), pubsub: gs } })
    const ps = this.node.services.pubsub
    this.topic = `ecac/v1/${o.project}/announce`
    ps.topicValidators.set(this.topic, (via, msg) => this.onAnnounce(via, msg))
    const handleIHave = ps.handleIHave.bind(ps) // observe IHAVE ids (issue 13 (b): must be BLAKE3 ids)
    ps.handleIHave = (id, ihave) => {
      const ids = ihave.flatMap((x) => x.messageIDs ?? [])
      const iwant = handleIHave(id, ihave)
      const asked = iwant.reduce((n, w) => n + (w.messageIDs?.length ?? 0), 0)
      this.emit({ event: 'ihave', from: id, ids: ids.length, id_lens: [...new Set(ids.map((i) => i.length))], iwant: asked })
      return iwant
    }
    ps.subscribe(this.topic)
    ps.addEventListener('subscription-change', (e) => {
      for (const s of e.detail.subscriptions) {
        if (s.topic === this.topic) this.emit({ event: s.subscribe ? 'subscribed' : 'unsubscribed', peer: e.detail.peerId.toString() })
      }
    })
    this.node.addEventListener('peer:connect', (e) => this.emit({ event: 'connected', peer: e.detail.toString() }))
    this.node.addEventListener('peer:disconnect', (e) => this.emit({ event: 'disconnected', peer: e.detail.toString() }))
    this.node.addEventListener('peer:identify', (e) => this.emit({ event: 'identified', peer: e.detail.peerId.toString(),
      protocols: e.detail.protocols, agent: e.detail.agentVersion ?? null }))
    await this.node.handle(SYNC, (d) => this.serve(d).catch((err) => {
      this.emit({ event: 'serve_error', error: String(err.message ?? err) })
      d.stream.abort(err)
    }))
    if (o.ops) for (const op of readLog(o.ops)) this.store.add(op)
    this.emit({ event: 'listening', peer_id: this.node.peerId.toString(), vk: hex(this.vk),
      addrs: this.node.getMultiaddrs().map(String), ops: this.store.ops.size, heads: this.store.heads(16) })
    for (const a of o.dial) await this.dial(a)
  }

  onAnnounce (via, msg) {
    const from = msg.type === 'signed' ? msg.from.toString() : null
    try {
      const a = validateAnnounce(msg.data, msg.type === 'signed' ? msg.from.publicKey?.raw : null)
      this.emit({ event: 'announce', from, via: via.toString(), valid: true, msg_id: hex(blake3(msg.data)), ...a })
      return TopicValidatorResult.Accept
    } catch (err) {
      this.emit({ event: 'announce', from, via: via.toString(), valid: false, error: err.message })
      return TopicValidatorResult.Reject
    }
  }

  async publish () {
    const data = signedAnnounce(this.seed, this.vk, this.store)
    const r = await this.node.services.pubsub.publish(this.topic, data)
    this.emit({ event: 'published', msg_id: hex(blake3(data)), bytes: data.length, recipients: r.recipients.map(String), topo_watermark: this.store.ops.size })
  }

  async dial (addr) {
    const conn = await this.node.dial(multiaddr(addr))
    this.emit({ event: 'dialed', peer: conn.remotePeer.toString() })
  }

  conn (peer) {
    const c = this.node.getConnections().find((x) => x.remotePeer.toString() === peer)
    if (!c) throw new Error(`not connected to ${peer}`)
    return c
  }

  async ping (peer) { this.emit({ event: 'ping', peer, rtt_ms: await this.node.services.ping.ping(this.conn(peer).remotePeer) }) }

  /** Server side of §5.2: one request frame, then OpBytes* and End|More in one write, then close. */
  async serve ({ stream, connection }) {
    const frames = readFrames(stream.source, MAX_REQUEST_FRAME)
    const first = await frames.next()
    if (first.done) throw new Error('no request frame')
    const [want, boundary, maxOps] = fields(strictDecode(first.value, 'SyncRequest'), ['want', 'boundary', 'max_ops'], 'SyncRequest')
    if (want.length > 256 || boundary.length > 256) throw new Error('SyncRequest over the id limits')
    const ids = (l) => l.map((i) => hex(bytesOf(i, 'id', 32)))
    const { ops, more } = this.store.responseSet(ids(want), ids(boundary), maxOps)
    const blob = concat([...ops.map((op) => frame(enc(new Map([['OpBytes', arr(op.bytes)]])))), frame(enc(more ? 'More' : 'End'))])
    await stream.sink([blob])
    for await (const _ of frames) throw new Error('data after the request frame') // eslint-disable-line no-unused-vars
    this.emit({ event: 'served', peer: connection.remotePeer.toString(), want: want.length, boundary: boundary.length,
      ops: ops.length, trailer: more ? 'More' : 'End', ids: ops.map((op) => op.id) })
  }

  /** Requester side of §5.3 (anti-entropy form, want = []), every check of §5.3 applied. */
  async fetch (peer) {
    let total = 0; let dups = 0; let requests = 0; let trailer = null; const ids = []
    do {
      requests++
      const stream = await this.conn(peer).newStream(SYNC)
      await stream.sink([syncRequest([], this.store.heads(128), 0)])
      trailer = null
      for await (const body of readFrames(stream.source, MAX_FRAME)) {
        if (trailer) throw new Error('frame after the trailer')
        const f = strictDecode(body, 'RpcFrame')
        if (f === 'End' || f === 'More') { trailer = f; continue }
        const op = parseOp(bytesOf(fields(f, ['OpBytes'], 'RpcFrame')[0], 'OpBytes'))
        if (this.store.ops.has(op.id)) { dups++; continue }
        this.store.add(op) // throws unless every parent is held or came earlier in this response
        ids.push(op.id); total++
      }
      if (!trailer) throw new Error('stream ended without a trailer')
    } while (trailer === 'More' && requests < 16)
    this.emit({ event: 'fetched', peer, ops: total, duplicates: dups, requests, trailer, ids,
      parent_first: true, ids_verified: true, store_ops: this.store.ops.size }) // else add/parseOp threw
  }
}

async function main () {
  const { values: v } = parseArgs({ options: { project: { type: 'string', default: 'ecac-test' }, listen: { type: 'string', multiple: true },
    dial: { type: 'string', multiple: true, default: [] }, ops: { type: 'string' }, nodes: { type: 'string', default: '1' },
    'heartbeat-ms': { type: 'string', default: '200' }, 'op-ids': { type: 'string' }, 'announce-vector': { type: 'boolean' } } })
  if (v['op-ids']) { for (const op of readLog(v['op-ids'])) out({ op_id: op.id, parents: op.parents }); return }
  if (v['announce-vector']) { // docs/protocol.md §3.1–3.2: seed 07×32, watermark 3, one head, bloom 28a7
    const seed = new Uint8Array(32).fill(7); const vk = ed25519.getPublicKey(seed)
    const store = { ops: { size: 3 }, heads: () => ['163787f919dac5a6ca7d12eb3c017f90cc905c483c8e23757c28be241528ca08'], bloom16: () => [0x28, 0xa7] }
    const data = signedAnnounce(seed, vk, store)
    out({ signed_announce_hex: hex(data), msg_id: hex(blake3(data)), valid: validateAnnounce(data, vk) }); return
  }
  const envSeed = process.env.ECAC_JS_SEED_HEX
  const peers = [...Array(Number(v.nodes)).keys()].map((i) => new Peer(i,
    envSeed ? blake3(concat([unhex(envSeed), Uint8Array.of(i)])) : ed25519.utils.randomPrivateKey(),
    { project: v.project, listen: v.listen ?? ['/ip4/127.0.0.1/tcp/0'], dial: v.dial, ops: v.ops, heartbeatMs: Number(v['heartbeat-ms']) }))
  await Promise.all(peers.map((p) => p.start()))
  out({ event: 'ready', nodes: peers.length })
  const rl = createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    let c
    try { c = JSON.parse(line) } catch { return out({ event: 'error', error: `not JSON: ${line}` }) }
    const p = peers[c.node ?? 0]
    const run = { publish: () => p.publish(), fetch: () => p.fetch(c.peer), dial: () => p.dial(c.addr), ping: () => p.ping(c.peer) }[c.cmd]
    if (!p || !run) return out({ event: 'error', error: `unknown command or node: ${line}` })
    run().catch((err) => p.emit({ event: 'error', cmd: c.cmd, error: String(err.message ?? err) }))
  })
  rl.on('close', async () => { await Promise.allSettled(peers.map((p) => p.node.stop())); process.exit(0) })
}

main().catch((err) => { out({ event: 'fatal', error: String(err.stack ?? err) }); process.exit(1) })
