// The reference CID of a directory: ipfs-unixfs-importer (the importer under Helia's
// @helia/unixfs) with the IPIP-499 profile 'unixfs-v1-2025'.
//
//   node unixfs-cid.mjs DIR [--car OUT.car]
//
// Prints the CID of DIR (regular files and symlinks below it; the exec bit and times are not
// given to the importer, as treeseed's ipfs format does not record them). With --car, also
// writes the DAG into OUT.car (CARv1 rooted at that CID, depth-first) with @ipld/car.
import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { importer } from 'ipfs-unixfs-importer'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { CarWriter } from '@ipld/car/writer'
import * as dagPb from '@ipld/dag-pb'

async function * walk (root, rel) {
  const names = (await fs.readdir(join(root, rel))).sort()
  for (const name of names) {
    const path = rel === '' ? name : `${rel}/${name}`
    const st = await fs.lstat(join(root, path))
    if (st.isDirectory()) {
      yield * walk(root, path)
    } else if (st.isSymbolicLink()) {
      yield { path: `pkg/${path}`, link: await fs.readlink(join(root, path)) }
    } else {
      yield { path: `pkg/${path}`, content: createReadStream(join(root, path)) }
    }
  }
}

const [dir, flag, out] = process.argv.slice(2)
const blockstore = new MemoryBlockstore()
let root = null
for await (const entry of importer(walk(dir, ''), blockstore, { profile: 'unixfs-v1-2025' })) {
  if (entry.path === 'pkg') root = entry.cid
}
if (root === null) throw new Error(`${dir}: the importer gave no CID for the directory (is it empty?)`)
if (flag === '--car') {
  const { writer, out: carBytes } = CarWriter.create([root])
  const piped = Readable.from(carBytes).pipe(createWriteStream(out))
  // Depth-first from the root, each block once, as a gateway sends it ('order=dfs; dups=n'):
  // the blockstore keys blocks by multihash alone, so its own listing loses their codecs.
  const seen = new Set()
  const visit = async (cid) => {
    if (seen.has(cid.toString())) return
    seen.add(cid.toString())
    const got = blockstore.get(cid)
    const bytes = got instanceof Uint8Array ? got : await collect(got)
    await writer.put({ cid, bytes })
    if (cid.code === dagPb.code) {
      for (const link of dagPb.decode(bytes).Links) await visit(link.Hash)
    }
  }
  await visit(root)
  await writer.close()
  await new Promise((resolve, reject) => { piped.on('finish', resolve); piped.on('error', reject) })
}
console.log(root.toString())

async function collect (chunks) {
  const parts = []
  for await (const c of chunks) parts.push(c)
  return Buffer.concat(parts)
}
