// `make test-asyncapi`, second half: validates docs/asyncapi.yaml with the AsyncAPI parser, then
// checks it against what a real gateway sent in gateway/tests/asyncapi.rs (the first half, which
// writes the observed messages, requests and close codes to a JSON file):
//   - the document parses with no error (and no warning) diagnostics;
//   - every message the gateway sent on /ws and every event on /sse is a message of that
//     channel, named by its `type`, and validates against its payload schema (which allows no
//     undocumented field);
//   - every request the test sent validates against the request's schema;
//   - every close code (and reason) the gateway sent is listed in the channel's x-close-codes;
//   - the other way round: every server message, every field of each, every error code and
//     every close code the spec lists was seen, so the spec holds nothing the gateway never
//     sends and the scripted session leaves nothing out.
// Usage: node check.mjs SPEC.yaml OBSERVED.json
// It never starts a gateway or opens a connection.

import { readFileSync } from "node:fs";
import { Parser, fromFile } from "@asyncapi/parser";
import Ajv from "ajv";

const [specPath, observedPath] = process.argv.slice(2);
if (!specPath || !observedPath) {
  console.error("usage: node check.mjs SPEC.yaml OBSERVED.json");
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(name, problems) {
  if (problems.length === 0) {
    passed += 1;
    console.log(`ok: ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL: ${name}`);
    for (const p of problems.slice(0, 20)) console.log(`  - ${p}`);
    if (problems.length > 20) console.log(`  - … and ${problems.length - 20} more`);
  }
}

const { document, diagnostics } = await fromFile(new Parser(), specPath).parse();
const severities = ["error", "warning", "info", "hint"];
const serious = diagnostics.filter((d) => d.severity <= 1);
check(
  `${specPath} parses as AsyncAPI ${document ? document.version() : "?"} with no errors or warnings`,
  serious.map((d) => `${severities[d.severity]} at ${d.path.join(".") || "(root)"}: ${d.message}`),
);
if (!document) {
  console.log(`test-asyncapi: ${passed} passed, ${failed} failed`);
  process.exit(1);
}

const observed = JSON.parse(readFileSync(observedPath, "utf8"));
const ajv = new Ajv({ strict: false, allErrors: true });

// Strips the parser's own annotations, so the schemas are plain JSON Schema for Ajv.
function plain(schema) {
  return JSON.parse(JSON.stringify(schema, (key, value) => (key.startsWith("x-parser-") ? undefined : value)));
}

// The top-level properties a payload schema names (following allOf).
function propertiesOf(schema) {
  const names = new Set(Object.keys(schema.properties ?? {}));
  for (const part of schema.allOf ?? []) for (const n of propertiesOf(part)) names.add(n);
  return names;
}

// A channel's messages by name, with their compiled payload schemas.
function catalogue(channelId) {
  const channel = document.channels().get(channelId);
  if (!channel) throw new Error(`the spec has no channel ${channelId}`);
  const out = new Map();
  for (const message of channel.messages().all()) {
    const schema = plain(message.payload().json());
    out.set(message.name(), { schema, validate: ajv.compile(schema), fields: propertiesOf(schema) });
  }
  return { channel, messages: out };
}

const ws = catalogue("ws");
const sse = catalogue("sse");
const requestNames = ["subscribe", "unsubscribe", "ping"];
const serverNames = (cat) => [...cat.messages.keys()].filter((n) => !requestNames.includes(n));

// Each message is named after the `type` (or request `op`) it carries.
{
  const problems = [];
  for (const [cat, id] of [[ws, "ws"], [sse, "sse"]]) {
    for (const [name, m] of cat.messages) {
      const key = requestNames.includes(name) ? "op" : "type";
      const ex = document.channels().get(id).messages().get(name).examples().all();
      if (ex.length === 0) problems.push(`${id}/${name}: no example`);
      for (const e of ex) {
        if (!m.validate(e.payload())) problems.push(`${id}/${name}: its example does not validate: ${ajv.errorsText(m.validate.errors)}`);
        else if (e.payload()[key] !== name) problems.push(`${id}/${name}: its example's ${key} is ${e.payload()[key]}`);
      }
    }
  }
  check("every message is named by its type (or op), and its examples validate", problems);
}

function validateAll(cat, label, items) {
  const problems = [];
  for (const { kind, value } of items) {
    const m = cat.messages.get(kind);
    if (!m || requestNames.includes(kind)) {
      problems.push(`${label}: the gateway sent a "${kind}", which the spec does not list: ${JSON.stringify(value)}`);
      continue;
    }
    if (!m.validate(value)) problems.push(`${label}/${kind}: ${ajv.errorsText(m.validate.errors)}: ${JSON.stringify(value)}`);
  }
  return problems;
}

const wsItems = observed.ws.map((m) => ({ kind: m.type, value: m }));
check(`the ${observed.ws.length} messages sent on /ws are in the spec and match their schemas`, validateAll(ws, "ws", wsItems));

const sseItems = observed.sse.map((e) => ({ kind: e.event, value: e.data }));
check(
  `the ${observed.sse.length} events sent on /sse are in the spec and match their schemas`,
  validateAll(sse, "sse", sseItems).concat(
    observed.sse.filter((e) => e.data.type !== e.event).map((e) => `event "${e.event}" carries a "${e.data.type}"`),
  ),
);

{
  const problems = [];
  for (const r of observed.requests) {
    const m = ws.messages.get(r.op);
    if (!m || !requestNames.includes(r.op)) problems.push(`a request with op ${r.op} is not in the spec`);
    else if (!m.validate(r)) problems.push(`${r.op}: ${ajv.errorsText(m.validate.errors)}: ${JSON.stringify(r)}`);
  }
  check(`the ${observed.requests.length} requests the test sent match their schemas`, problems);
}

// Close codes of the contract the gateway does not send yet, so the scripted session cannot see
// them: the new core closes no session at a JWT's `exp` and reloads nothing on SIGHUP (contract
// section 4, 4001; docs/protocol.md decisions 28 and 29). Reported, not failed, while unseen; once
// the gateway sends one, gateway/tests/asyncapi.rs records it and it is checked like the rest.
const KNOWN_GAPS = new Set(["4001 token expired", "4001 token revoked"]);

// Close codes: x-close-codes of the ws channel, as (code, reason) pairs.
const closeCodes = ws.channel.extensions().get("x-close-codes")?.value() ?? [];
{
  const problems = [];
  for (const c of observed.closes) {
    const listed = closeCodes.filter((l) => l.code === c.code);
    if (listed.length === 0) problems.push(`close code ${c.code} ("${c.reason}") is not in x-close-codes`);
    else if (c.code !== 1000 && !listed.some((l) => l.reason === c.reason)) {
      problems.push(`close code ${c.code} came with reason "${c.reason}", the spec lists ${listed.map((l) => `"${l.reason}"`).join(", ")}`);
    }
  }
  check(`the ${observed.closes.length} close frames the gateway sent are in x-close-codes`, problems);
}

// The other way round: nothing in the spec that the gateway was not seen to send.
{
  const problems = [];
  for (const [cat, label, items] of [[ws, "ws", wsItems], [sse, "sse", sseItems]]) {
    for (const name of serverNames(cat)) {
      const seen = items.filter((i) => i.kind === name);
      if (seen.length === 0) {
        problems.push(`${label}: the spec lists "${name}", never sent in the scripted session`);
        continue;
      }
      const fields = new Set(seen.flatMap((i) => Object.keys(i.value)));
      for (const f of cat.messages.get(name).fields) {
        if (!fields.has(f)) problems.push(`${label}/${name}: field "${f}" never seen`);
      }
    }
  }
  const errorCodes = ws.messages.get("error").schema.properties.code.enum;
  const seenCodes = new Set(observed.ws.filter((m) => m.type === "error").map((m) => m.code));
  for (const code of errorCodes) if (!seenCodes.has(code)) problems.push(`error code ${code} never seen`);
  const seenCloses = new Set(observed.closes.map((c) => `${c.code} ${c.reason}`));
  for (const l of closeCodes) {
    const seen = l.code === 1000 ? observed.closes.some((c) => c.code === 1000) : seenCloses.has(`${l.code} ${l.reason}`);
    if (seen) continue;
    if (KNOWN_GAPS.has(`${l.code} ${l.reason}`)) console.log(`known gap: close ${l.code} "${l.reason}" is not sent by this gateway yet`);
    else problems.push(`close ${l.code} "${l.reason}" never seen`);
  }
  check("every message, field, error code and close code of the spec was sent by the gateway", problems);
}

console.log(`test-asyncapi: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
