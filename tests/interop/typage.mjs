// A thin driver for the TypeScript age ("typage", npm age-encryption) used by
// tests/test_interop_typage.py: one JSON request on stdin, one JSON answer on
// stdout. Bytes travel as base64. The module path comes from $TYPAGE.
import { readFileSync } from "node:fs"
import { pathToFileURL } from "node:url"

const age = await import(pathToFileURL(process.env.TYPAGE).href)
const request = JSON.parse(readFileSync(0, "utf8"))
const b64 = (bytes) => Buffer.from(bytes).toString("base64")
const raw = (text) => new Uint8Array(Buffer.from(text, "base64"))

async function one(item) {
  try {
    if (request.op === "decrypt") {
      const d = new age.Decrypter()
      d.addIdentity(item.identity)
      return { plaintext: b64(await d.decrypt(raw(item.file))) }
    }
    if (request.op === "encrypt") {
      const e = new age.Encrypter()
      e.addRecipient(item.recipient)
      return { file: b64(await e.encrypt(raw(item.plaintext))) }
    }
    if (request.op === "generate") {
      const identity = item.hybrid ? await age.generateHybridIdentity() : await age.generateIdentity()
      return { identity, recipient: await age.identityToRecipient(identity) }
    }
    if (request.op === "recipient") {
      return { recipient: await age.identityToRecipient(item.identity) }
    }
    return { error: `unknown op ${request.op}` }
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) }
  }
}

const answers = []
for (const item of request.items) answers.push(await one(item))
process.stdout.write(JSON.stringify(answers))
