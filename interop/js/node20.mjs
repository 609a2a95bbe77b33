// Node 20 compatibility, imported by peer.mjs before any libp2p module: it-queue (used by mortice,
// used by @libp2p/peer-store, all within libp2p 2.x's caret ranges) calls Promise.withResolvers,
// which Node only has from 22 on. This is the ES2024 definition; remove once Node 22 is the minimum.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
