#!/usr/bin/env node
// An independent verifier of a ledger export (format incidentledger.audit.export.v1),
// written from docs/hash-chain.md alone: plain Node.js (18 or later), no packages, only
// node:crypto and node:fs. It shares no code with the ledger.
//
// Usage: node verify_export.mjs --public-key KEY [--public-key KEY ...] [--checkpoints WITNESS.jsonl] EXPORT.jsonl
//   KEY: the ledger's Ed25519 public keys, PEM (SubjectPublicKeyInfo) or base64 of 32 bytes,
//   one or several a file; the current key and those the ledger retired (section 6).
//   WITNESS.jsonl: a witness's checkpoints, one published checkpoint object a line.
// Prints one JSON object and exits 0 when the file verifies, 1 on the first failure (with its
// kind, line, position, incident, version and detail), 2 on a usage or input error, 3 when the
// file was sealed with another key than the one given (kind wrong_key). A clean
// report names the header's range and the checkpoints after it (not checked: section 8).
// The section numbers in the comments are those of docs/hash-chain.md.

import { createHash, createPublicKey, verify as verifySignature } from "node:crypto";
import { readFileSync } from "node:fs";

const EXPORT_FORMAT = "incidentledger.audit.export.v1";
const CHECKPOINT_FORMAT = "incidentledger.checkpoint.v1";
const SEAL_PREFIX = "incidentledger.seal.v1:";
const GENESIS = "0".repeat(64);
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
// Section 7: the keys of the body that are not the payload.
const ENVELOPE_KEYS = new Set([
  "type", "schema_version", "originator_id", "originator_version", "event_id", "timestamp",
  "occurred_at", "actor_agency", "actor_officer", "reason", "location", "correlation_id",
  "causation_id", "request_id", "previous_hash",
]);

class Failure extends Error {
  constructor(kind, detail, where = {}) {
    super(detail);
    this.kind = kind;
    this.where = where;
  }
}

class UsageError extends Error {}

// ----------------------------------------------------------------- JSON with number kinds

// Section 1: integers and floats are different values, so numbers are kept with their kind.
class Int {
  constructor(text) { this.value = BigInt(text); }
}
class Float {
  constructor(text) { this.value = Number(text); }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

function parseJson(text) {
  let at = 0;
  const fail = (why) => { throw new SyntaxError(`${why} at character ${at}`); };
  const space = () => { while (at < text.length && " \t\n\r".includes(text[at])) at++; };
  const value = () => {
    space();
    const c = text[at];
    if (c === "{") return object();
    if (c === "[") return array();
    if (c === '"') return string();
    if (text.startsWith("true", at)) { at += 4; return true; }
    if (text.startsWith("false", at)) { at += 5; return false; }
    if (text.startsWith("null", at)) { at += 4; return null; }
    NUMBER.lastIndex = at;
    const m = NUMBER.exec(text);
    if (!m) fail("unexpected character");
    at += m[0].length;
    return /[.eE]/.test(m[0]) ? new Float(m[0]) : new Int(m[0]);
  };
  const object = () => {
    const result = Object.create(null);
    at++;
    space();
    if (text[at] === "}") { at++; return result; }
    for (;;) {
      space();
      if (text[at] !== '"') fail("expected a key");
      const key = string();
      if (Object.prototype.hasOwnProperty.call(result, key)) fail(`duplicate key ${JSON.stringify(key)}`);
      space();
      if (text[at] !== ":") fail("expected ':'");
      at++;
      result[key] = value();
      space();
      if (text[at] === ",") { at++; continue; }
      if (text[at] === "}") { at++; return result; }
      fail("expected ',' or '}'");
    }
  };
  const array = () => {
    const result = [];
    at++;
    space();
    if (text[at] === "]") { at++; return result; }
    for (;;) {
      result.push(value());
      space();
      if (text[at] === ",") { at++; continue; }
      if (text[at] === "]") { at++; return result; }
      fail("expected ',' or ']'");
    }
  };
  const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
  const string = () => {
    at++;
    let out = "";
    for (;;) {
      if (at >= text.length) fail("unterminated string");
      const c = text[at++];
      if (c === '"') return out;
      if (c < " ") fail("raw control character in a string");
      if (c !== "\\") { out += c; continue; }
      const e = text[at++];
      if (e === "u") {
        const hex = text.slice(at, at + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("bad \\u escape");
        out += String.fromCharCode(parseInt(hex, 16));
        at += 4;
      } else if (e in ESCAPES) {
        out += ESCAPES[e];
      } else {
        fail("bad escape");
      }
    }
  };
  const result = value();
  space();
  if (at !== text.length) fail("trailing characters");
  return result;
}

// ----------------------------------------------------------------- canonical JSON (section 1)

function checkScalarValues(s) {
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (u >= 0xd800 && u <= 0xdbff) {
      const next = s.charCodeAt(i + 1);
      if (!(next >= 0xdc00 && next <= 0xdfff)) throw new Error("unpaired surrogate in a string");
      i++;
    } else if (u >= 0xdc00 && u <= 0xdfff) {
      throw new Error("unpaired surrogate in a string");
    }
  }
}

const SHORT_ESCAPES = { '"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r" };

function cjString(s) {
  checkScalarValues(s);
  let out = '"';
  for (const c of s) {
    if (c in SHORT_ESCAPES) out += SHORT_ESCAPES[c];
    else if (c < " ") out += "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0");
    else out += c;
  }
  return out + '"';
}

// The shortest round-tripping digits of a positive finite double (Number's own toString is
// the shortest, nearest such string) and the decimal exponent e: value = 0.digits x 10^e.
function shortestDigits(a) {
  let text = String(a);
  let exponent = 0;
  const e = text.indexOf("e");
  if (e >= 0) { exponent = parseInt(text.slice(e + 1), 10); text = text.slice(0, e); }
  const dot = text.indexOf(".");
  const whole = dot < 0 ? text : text.slice(0, dot);
  const fraction = dot < 0 ? "" : text.slice(dot + 1);
  let digits = whole + fraction;
  let point = whole.length + exponent;
  const lead = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(lead);
  point -= lead;
  digits = digits.replace(/0+$/, "");
  return { digits, point };
}

function cjFloat(x) {
  if (!Number.isFinite(x)) throw new Error("a float that is not finite");
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const { digits, point } = shortestDigits(Math.abs(x));
  const n = digits.length;
  if (point > -4 && point <= 16) {
    if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
    if (point >= n) return `${sign}${digits}${"0".repeat(point - n)}.0`;
    return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
  }
  const exp = point - 1;
  const mantissa = n > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${mantissa}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
}

function byCodePoint(a, b) {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

function cj(value) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (value instanceof Int) return value.value.toString();
  if (value instanceof Float) return cjFloat(value.value);
  if (typeof value === "string") return cjString(value);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : cjFloat(value);
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map(cj).join(",")}]`;
  const keys = Object.keys(value).sort(byCodePoint);
  return `{${keys.map((k) => `${cjString(k)}:${cj(value[k])}`).join(",")}}`;
}

const cjBytes = (value) => Buffer.from(cj(value), "utf8");
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// ----------------------------------------------------------------- keys and signatures

// A file of public keys: PEM blocks and base64 lines; blank lines and "#" lines skipped.
function loadPublicKeys(path) {
  const keys = [];
  let block = null;
  for (const raw of readFileSync(path, "utf8").split("\n")) {
    const line = raw.trim();
    if (block !== null || line.startsWith("-----BEGIN")) {
      block = [...(block ?? []), line];
      if (line.startsWith("-----END")) { keys.push(parsePublicKey(block.join("\n"), path)); block = null; }
    } else if (line !== "" && !line.startsWith("#")) {
      keys.push(parsePublicKey(line, path));
    }
  }
  if (block !== null || keys.length === 0) throw new UsageError(`${path}: no public key, or a PEM block without its end`);
  return keys;
}

function parsePublicKey(text, path) {
  let key;
  if (text.startsWith("-----BEGIN")) {
    key = createPublicKey(text);
  } else {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new UsageError(`${path}: neither PEM nor base64`);
    const raw = Buffer.from(text, "base64");
    if (raw.length !== 32) throw new UsageError(`${path}: not a 32-byte Ed25519 key`);
    key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: "der", type: "spki" });
  }
  if (key.asymmetricKeyType !== "ed25519") throw new UsageError(`${path}: not an Ed25519 key`);
  return key;
}

function base64Bytes(text, size) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  const bytes = Buffer.from(text, "base64");
  return bytes.length === size ? bytes : null;
}

function ed25519(publicKey, message, signature) {
  try {
    return verifySignature(null, message, publicKey, signature);
  } catch {
    return false;
  }
}

// The id of the given key that made the signature, or null.
function signer(keys, message, signature) {
  for (const key of keys) if (ed25519(key, message, signature)) return keyIdOf(key);
  return null;
}

// Section 4: "<key id>:<base64 signature>" over ASCII("incidentledger.seal.v1:" + hash).
// The id of the key that made it, or the problem: { signer } or { problem }.
function sealSigner(keys, hash, seal) {
  if (typeof seal !== "string" || seal === "") return { problem: "it carries no seal" };
  const colon = seal.indexOf(":");
  const signature = colon < 0 ? null : base64Bytes(seal.slice(colon + 1), 64);
  if (signature === null) return { problem: "its seal is malformed" };
  const id = signer(keys, Buffer.from(SEAL_PREFIX + hash, "ascii"), signature);
  return id === null ? { problem: "its seal does not verify with the given keys" } : { signer: id };
}

// ----------------------------------------------------------------- checkpoints (section 6)

function count(value, what) {
  if (value instanceof Int && value.value >= 0n) return value.value;
  if (typeof value === "string" && /^(0|[1-9][0-9]*)$/.test(value)) return BigInt(value);
  throw new Error(`${what} is not a non-negative integer`);
}

function parseCheckpoint(record) {
  const position = count(record.position, "position");
  const events = count(record.events, "events");
  const { head, created_at: createdAt, signature } = record;
  if (typeof head !== "string" || typeof createdAt !== "string") throw new Error("head or created_at is not text");
  const bytes = base64Bytes(signature, 64);
  if (bytes === null) throw new Error("the signature is not base64 of 64 bytes");
  return { position, events, head, createdAt, signature: bytes, keyId: record.key_id };
}

// The id of the given key that signed the checkpoint, or null.
function checkpointSigner(keys, cp) {
  const signed = cjBytes({
    created_at: cp.createdAt,
    events: cp.events,
    format: CHECKPOINT_FORMAT,
    head: cp.head,
    position: cp.position,
  });
  return signer(keys, signed, cp.signature);
}

// ----------------------------------------------------------------- the envelope (section 7)

const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$/;

function protoTime(t) {
  if (typeof t !== "string" || !TIME.test(t)) throw new Error(`not a canonical time: ${JSON.stringify(t)}`);
  const fraction = t.slice(20, 26);
  if (fraction === "000000") return `${t.slice(0, 19)}Z`;
  if (fraction.endsWith("000")) return `${t.slice(0, 19)}.${fraction.slice(0, 3)}Z`;
  return `${t.slice(0, 19)}.${fraction}Z`;
}

function text(body, key) {
  const v = body[key];
  if (typeof v !== "string") throw new Error(`body ${key} is not text`);
  return v;
}

function expectedEnvelope(body, position, hash, seal) {
  const envelope = Object.create(null);
  envelope.event_id = text(body, "event_id");
  envelope.incident = `incidents/${text(body, "originator_id")}`;
  envelope.version = count(body.originator_version, "body originator_version").toString();
  envelope.type = text(body, "type");
  const schema = count(body.schema_version, "body schema_version");
  if (schema !== 0n) envelope.schema_version = new Int(schema.toString());
  if (body.occurred_at !== null) envelope.occur_time = protoTime(body.occurred_at);
  envelope.record_time = protoTime(body.timestamp);
  const actor = Object.create(null);
  if (text(body, "actor_agency")) actor.agency = body.actor_agency;
  if (text(body, "actor_officer")) actor.officer = body.actor_officer;
  envelope.actor = actor;
  if (text(body, "reason")) envelope.reason = body.reason;
  const location = body.location;
  if (location !== null && typeof location === "object" && !Array.isArray(location) && Object.keys(location).length > 0) {
    const expected = Object.create(null);
    for (const key of ["kecamatan", "desa", "tps"]) {
      if (typeof location[key] === "string" && location[key] !== "") expected[key] = location[key];
    }
    for (const key of ["latitude", "longitude"]) {
      if (location[key] !== undefined && location[key] !== null) expected[key] = location[key];
    }
    envelope.location = expected;
  } else if (location !== null) {
    if (typeof location !== "object" || Array.isArray(location)) throw new Error("body location is not an object");
  }
  for (const key of ["correlation_id", "causation_id", "request_id", "previous_hash"]) {
    if (text(body, key)) envelope[key] = body[key];
  }
  envelope.hash = hash;
  envelope.position = position.toString();
  const payload = Object.create(null);
  for (const key of Object.keys(body)) if (!ENVELOPE_KEYS.has(key)) payload[key] = body[key];
  envelope.payload_json = payload; // compared parsed, with the time rule of section 7
  if (seal !== undefined) envelope.seal = seal;
  return envelope;
}

function numeric(v) {
  if (v instanceof Int) return Number(v.value);
  if (v instanceof Float) return v.value;
  return undefined;
}

// Equal values; a time of the body with a zero fraction may be written without it.
function samePayloadValue(found, wanted) {
  if (typeof wanted === "string") {
    return found === wanted || (typeof found === "string" && wanted.length === 32
      && wanted.slice(20, 26) === "000000" && found === wanted.slice(0, 19) + wanted.slice(26));
  }
  if (wanted instanceof Int) return found instanceof Int && found.value === wanted.value;
  if (wanted instanceof Float) return found instanceof Float && found.value === wanted.value;
  if (Array.isArray(wanted)) {
    return Array.isArray(found) && found.length === wanted.length && wanted.every((w, i) => samePayloadValue(found[i], w));
  }
  if (wanted !== null && typeof wanted === "object") {
    if (found === null || typeof found !== "object" || Array.isArray(found) || found instanceof Int || found instanceof Float) return false;
    const keys = Object.keys(wanted);
    return Object.keys(found).length === keys.length && keys.every((k) => k in found && samePayloadValue(found[k], wanted[k]));
  }
  return found === wanted;
}

function envelopeDifference(record, expected) {
  const got = Object.keys(record).filter((k) => k !== "canonical").sort();
  const want = Object.keys(expected).sort();
  if (got.join(",") !== want.join(",")) return `members [${got}] instead of [${want}]`;
  for (const key of want) {
    const found = record[key];
    const wanted = expected[key];
    if (key === "payload_json") {
      let parsed;
      try {
        parsed = typeof found === "string" ? parseJson(found) : undefined;
      } catch {
        parsed = undefined;
      }
      if (parsed === undefined || !samePayloadValue(parsed, wanted)) return "payload_json differs from the body";
    } else if (key === "location" || key === "actor") {
      const a = Object.keys(found ?? {}).sort().join(",");
      const b = Object.keys(wanted).sort().join(",");
      if (found === null || typeof found !== "object" || a !== b) return `${key} differs from the body`;
      for (const k of Object.keys(wanted)) {
        const same = numeric(wanted[k]) !== undefined ? numeric(found[k]) === numeric(wanted[k]) : found[k] === wanted[k];
        if (!same) return `${key}.${k} differs from the body`;
      }
    } else if (wanted instanceof Int) {
      if (numeric(found) !== Number(wanted.value)) return `${key} differs from the body`;
    } else if (found !== wanted) {
      return `${key} differs from the body`;
    }
  }
  return null;
}

// ----------------------------------------------------------------- the key (section 8)

// Section 4: the key id, the first 16 hexadecimal digits of SHA-256 of the raw public key.
function keyIdOf(publicKey) {
  const spki = publicKey.export({ format: "der", type: "spki" });
  return sha256(spki.subarray(spki.length - 32)).slice(0, 16);
}

// The wrong_key outcome: no checkpoint of the file or the witness verifies with a given key,
// and no seal or checkpoint names a given id, while some name another. Null when the keys may
// be the ledger's (then every signature is checked as section 8 says).
function wrongKey(lines, keys, witness) {
  const given = keys.map(keyIdOf);
  const named = new Set();
  const checkpoints = [...witness];
  for (const raw of lines.slice(1)) {
    let record;
    try {
      record = parseJson(raw);
    } catch {
      continue; // unreadable: the verification names it
    }
    if (record === null || typeof record !== "object") continue;
    if (record.record === "checkpoint") {
      try {
        checkpoints.push(parseCheckpoint(record));
      } catch {
        // malformed: the verification names it
      }
    } else if (typeof record.seal === "string" && record.seal !== "") {
      named.add(record.seal.split(":", 1)[0]);
    }
  }
  for (const cp of checkpoints) {
    if (checkpointSigner(keys, cp) !== null) return null;
    if (typeof cp.keyId === "string" && cp.keyId !== "") named.add(cp.keyId);
  }
  if (named.size === 0 || given.some((id) => named.has(id))) return null;
  return (
    `the history was sealed with key ${[...named].sort().join(", ")}; the given public key is ${given.join(", ")}. ` +
    "Check that the key is the ledger's: if it is, the whole file was sealed again with another key, " +
    "and is not the ledger's history"
  );
}

// ----------------------------------------------------------------- verification (section 8)

function verify(lines, keys, witness) {
  const state = { head: GENESIS, events: 0n, last: 0n, inFile: 0, covered: 0n, checked: 0 };
  const incidents = new Map(); // originator_id -> { version, hash, position, seal }
  const pending = []; // checkpoints to check once the events pass their position
  const seen = new Set();
  let lineNumber = 0;
  let partial = false;
  let range = null;
  let startPosition = 0n;
  let stop = null; // the header's stop: the last position the export states it covers
  const after = []; // checkpoints beyond it: signature checked, not compared with the file
  let end = null;

  const at = (extra = {}) => ({ line: lineNumber, ...extra });
  // Section 6: in position order, a checkpoint of another key retires the key before it.
  const retiredAt = new Map(); // key id -> the position of its successor's first checkpoint
  let lastSigner = null;

  function offer(cp, fromFile) {
    // The same checkpoint twice (the file's and the witness's copy) is checked once; one
    // with a signed field changed and the genuine signature kept is another, whose own
    // check fails (position and signature alone let it pass as a copy, unchecked).
    const ident = JSON.stringify([
      cp.position.toString(), cp.events.toString(), cp.head, cp.createdAt,
      cp.signature.toString("base64"), typeof cp.keyId === "string" ? cp.keyId : "",
    ]);
    if (seen.has(ident)) return;
    seen.add(ident);
    cp.signer = checkpointSigner(keys, cp);
    if (cp.signer === null) {
      throw new Failure("bad_signature", `the checkpoint at position ${cp.position} (key ${cp.keyId}) is not validly signed by the given keys`, at({ position: cp.position.toString() }));
    }
    if (cp.position < startPosition) return; // before the exported range
    // A witness's after the range is not checked; the file's own there are the store's past
    // a cut log's end (a whole log's export carries them): checked at the end (truncated).
    if (stop !== null && cp.position > stop && !fromFile) { after.push(cp.position); return; }
    if (fromFile && cp.position < state.last) {
      throw new Failure("reordered", `the checkpoint at position ${cp.position} comes after the event at position ${state.last}`, at({ position: cp.position.toString() }));
    }
    pending.push(cp);
    pending.sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
  }

  function pass(before, atEnd) {
    while (pending.length > 0 && (before === null || pending[0].position < before)) {
      const cp = pending.shift();
      const where = at({ position: cp.position.toString() });
      if (retiredAt.has(cp.signer) && cp.position > retiredAt.get(cp.signer)) {
        throw new Failure("bad_signature", `the checkpoint at position ${cp.position} is signed with key ${cp.signer}, retired at position ${retiredAt.get(cp.signer)}`, where);
      }
      if (lastSigner !== null && lastSigner !== cp.signer && !retiredAt.has(lastSigner)) retiredAt.set(lastSigner, cp.position);
      lastSigner = cp.signer;
      if (atEnd && state.last < cp.position && state.events < cp.events) {
        throw new Failure("truncated", `the file ends at position ${state.last} after ${state.events} events; the checkpoint at position ${cp.position} covers ${cp.events}`, where);
      }
      if (state.events < cp.events) throw new Failure("deleted", `${cp.events - state.events} event(s) up to position ${cp.position} are missing`, where);
      if (state.events > cp.events) throw new Failure("inserted", `${state.events - cp.events} event(s) up to position ${cp.position} were added`, where);
      if (state.head !== cp.head) throw new Failure("modified", `the chain head at position ${cp.position} differs from the signed checkpoint`, where);
      state.checked++;
      if (cp.position > state.covered) state.covered = cp.position;
    }
  }

  function event(record) {
    const body = record.canonical;
    if (body === null || typeof body !== "object" || Array.isArray(body) || body instanceof Int || body instanceof Float) {
      throw new Failure("modified", "an event line without its canonical body", at());
    }
    if (typeof record.position !== "string" || !/^[1-9][0-9]*$/.test(record.position)) {
      throw new Failure("modified", "an event line without a valid position", at());
    }
    const position = BigInt(record.position);
    const incident = typeof body.originator_id === "string" ? body.originator_id : "?";
    const where = at({
      position: position.toString(),
      incident: `incidents/${incident}`,
      version: body.originator_version instanceof Int ? body.originator_version.value.toString() : undefined,
    });
    let hash;
    let version;
    let expected;
    try {
      hash = sha256(cjBytes(body)); // 3
      version = count(body.originator_version, "body originator_version");
      if (record.seal !== undefined && typeof record.seal !== "string") throw new Error("the seal is not text");
      expected = expectedEnvelope(body, position, hash, record.seal);
    } catch (error) {
      throw new Failure("modified", `the event does not decode: ${error.message}`, where);
    }
    if (record.hash !== hash) throw new Failure("modified", "the event's hash does not match its content", where);
    const difference = envelopeDifference(record, expected); // 4
    if (difference !== null) throw new Failure("modified", `the envelope does not match the canonical event: ${difference}`, where);
    if (position <= state.last) { // 5
      const kind = position === state.last ? "inserted" : "reordered";
      throw new Failure(kind, `position ${position} comes after position ${state.last}`, where);
    }
    pass(position, false); // 8: checkpoints the events have now passed
    const track = incidents.get(incident); // 6
    const previousHash = body.previous_hash;
    if (track === undefined) {
      if (!(partial && version > 1n)) {
        if (version !== 1n) throw new Failure("deleted", `versions 1-${version - 1n} of the incident are missing`, where);
        if (previousHash !== GENESIS) throw new Failure("modified", "version 1 does not start from the genesis hash", where);
      }
    } else if (version > track.version + 1n) {
      throw new Failure("deleted", `version(s) ${track.version + 1n}-${version - 1n} are missing`, where);
    } else if (version <= track.version) {
      throw new Failure("inserted", `version ${version} of the incident appears a second time`, where);
    } else if (previousHash !== track.hash) {
      throw new Failure("modified", `its previous_hash does not link to version ${track.version} (position ${track.position})`, where);
    }
    incidents.set(incident, { version, hash, position, seal: record.seal });
    state.head = sha256(Buffer.from(`${state.head}:${position}:${hash}`, "ascii")); // 7
    state.events += 1n;
    state.inFile += 1;
    state.last = position;
  }

  for (const raw of lines) {
    lineNumber++;
    if (raw.trim() === "") continue;
    let record;
    try {
      record = parseJson(raw);
    } catch (error) {
      if (lineNumber === 1) throw new UsageError(`not a ledger export: ${error.message}`);
      throw new Failure("modified", `the line is unreadable: ${error.message}`, at());
    }
    if (record === null || typeof record !== "object" || Array.isArray(record) || record instanceof Int || record instanceof Float) {
      throw new Failure("modified", "the line is not a JSON object", at());
    }
    if (lineNumber === 1) { // 1
      if (record.record !== "header") throw new UsageError("not a ledger export: the first line is not its header");
      if (record.format !== EXPORT_FORMAT) throw new UsageError(`unknown export format ${JSON.stringify(record.format)}`);
      try {
        startPosition = count(record.start_position, "start_position");
        state.events = count(record.start_events, "start_events");
        if (typeof record.start_head !== "string") throw new Error("start_head is not text");
        state.head = record.start_head;
        if (record.stop !== undefined) stop = count(record.stop, "stop");
        range = { start: record.start === undefined ? null : count(record.start, "start").toString(), stop: stop === null ? null : stop.toString() };
      } catch (error) {
        throw new UsageError(`malformed export header: ${error.message}`);
      }
      state.last = startPosition;
      partial = state.events > 0n;
      for (const cp of witness) offer(cp, false);
      continue;
    }
    if (end !== null) throw new Failure("inserted", "a line follows the end record", at());
    if (record.record === "checkpoint") {
      let cp;
      try {
        cp = parseCheckpoint(record);
      } catch (error) {
        throw new Failure("modified", `a malformed checkpoint: ${error.message}`, at());
      }
      offer(cp, true);
    } else if (record.record === "end") {
      end = { record, line: lineNumber };
    } else {
      event(record);
    }
  }
  if (lineNumber === 0) throw new UsageError("not a ledger export: the file is empty");
  pass(null, true);
  for (const [incident, track] of incidents) { // 9
    if (track.position <= state.covered) continue;
    const sealed = sealSigner(keys, track.hash, track.seal);
    let problem = sealed.problem ?? null;
    if (problem === null && retiredAt.has(sealed.signer) && track.position > retiredAt.get(sealed.signer)) {
      problem = `it is sealed with key ${sealed.signer}, retired at position ${retiredAt.get(sealed.signer)}`;
    }
    if (problem !== null) {
      throw new Failure("modified", `the newest event of its incident (after the last checkpoint) was changed or forged: ${problem}`, { position: track.position.toString(), incident: `incidents/${incident}`, version: track.version.toString() });
    }
  }
  if (end === null) throw new Failure("truncated", `the file ends after position ${state.last} without its end record`, {}); // 10
  lineNumber = end.line;
  let events;
  let last;
  try {
    events = count(end.record.events, "events");
    last = count(end.record.last_position, "last_position");
  } catch {
    throw new Failure("modified", "the end record is malformed", at());
  }
  if (last > state.last || events > BigInt(state.inFile)) {
    throw new Failure("truncated", `the file's events end at position ${state.last} (${state.inFile} events), its end record says position ${last} (${events} events)`, at());
  }
  if (events !== BigInt(state.inFile) || last !== state.last || end.record.head !== state.head) {
    throw new Failure("modified", "the end record does not match the events in the file", at());
  }
  return {
    ok: true,
    events: state.inFile,
    incidents: incidents.size,
    checkpoints_checked: state.checked,
    last_position: state.last.toString(),
    head: state.head,
    range,
    checkpoints_after: [...new Set(after)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map(String),
  };
}

// ----------------------------------------------------------------- the command

function readLines(path) {
  const bytes = readFileSync(path);
  let textContent;
  try {
    textContent = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
  const lines = textContent.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function main(argv) {
  const keyPaths = [];
  let witnessPath = null;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--public-key") keyPaths.push(argv[++i]);
    else if (argv[i] === "--checkpoints") witnessPath = argv[++i];
    else files.push(argv[i]);
  }
  if (keyPaths.length === 0 || keyPaths.includes(undefined) || files.length !== 1) {
    throw new UsageError("usage: node verify_export.mjs --public-key KEY [--public-key KEY ...] [--checkpoints WITNESS.jsonl] EXPORT.jsonl");
  }
  const keys = keyPaths.flatMap(loadPublicKeys);
  const witness = [];
  if (witnessPath) {
    for (const line of readFileSync(witnessPath, "utf8").split("\n")) {
      if (line.trim() === "") continue;
      try {
        witness.push(parseCheckpoint(parseJson(line)));
      } catch (error) {
        throw new UsageError(`${witnessPath}: ${error.message}`);
      }
    }
  }
  const lines = readLines(files[0]);
  if (lines === null) {
    return { ok: false, divergence: { kind: "modified", detail: "the file is not valid UTF-8" } };
  }
  try {
    const wrong = wrongKey(lines, keys, witness);
    if (wrong !== null) return { ok: false, divergence: { kind: "wrong_key", detail: wrong } };
    return verify(lines, keys, witness);
  } catch (error) {
    if (!(error instanceof Failure)) throw error;
    return { ok: false, divergence: { kind: error.kind, ...error.where, detail: error.message } };
  }
}

try {
  const report = main(process.argv.slice(2));
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exitCode = report.ok ? 0 : report.divergence.kind === "wrong_key" ? 3 : 1;
} catch (error) {
  process.stdout.write(`${JSON.stringify({ ok: false, error: error.message })}\n`);
  process.exitCode = 2;
}
