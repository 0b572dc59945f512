// Validates an OpenRPC document with @open-rpc/schema-utils-js: the document as written against
// the OpenRPC meta-schema, then dereferenced (every $ref resolved) and validated again.
// Usage: node validate.mjs [DOCUMENT] (default: rpc-spec/openrpc.json). Prints one JSON line;
// exits 1 when the document is invalid or a reference does not resolve.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import utils from "@open-rpc/schema-utils-js";

const { dereferenceDocument, validateOpenRPCDocument } = utils;
const path = process.argv[2] ?? fileURLToPath(new URL("../../rpc-spec/openrpc.json", import.meta.url));

function fail(stage, error) {
  console.log(JSON.stringify({ valid: false, stage, error: String(error?.message ?? error) }));
  process.exit(1);
}

const doc = JSON.parse(readFileSync(path, "utf8"));
const asWritten = validateOpenRPCDocument(doc);
if (asWritten !== true) fail("validate", asWritten);
let dereferenced;
try {
  dereferenced = await dereferenceDocument(structuredClone(doc));
} catch (e) {
  fail("dereference", e);
}
const resolved = validateOpenRPCDocument(dereferenced);
if (resolved !== true) fail("validate dereferenced", resolved);
// Nothing is left to resolve in what tools read (params, results); a reference left in an
// extension (`x-notifications`) must still point into the document.
const refs = [];
const walk = (v, seen = new Set()) => {
  if (v === null || typeof v !== "object" || seen.has(v)) return;
  seen.add(v);
  if (typeof v.$ref === "string") refs.push(v.$ref);
  Object.values(v).forEach((x) => walk(x, seen));
};
dereferenced.methods.forEach((m) => walk([m.params, m.result]));
if (refs.length > 0) fail("dereference", `unresolved: ${refs.join(", ")}`);
const pointer = (ref) =>
  ref.startsWith("#/") &&
  ref.slice(2).split("/").reduce((v, k) => (v === undefined ? v : v[k.replace(/~1/g, "/").replace(/~0/g, "~")]), doc);
walk(dereferenced);
const dangling = refs.filter((r) => pointer(r) === undefined || pointer(r) === false);
if (dangling.length > 0) fail("dereference", `dangling: ${dangling.join(", ")}`);
console.log(JSON.stringify({ valid: true, methods: dereferenced.methods.map((m) => m.name) }));
