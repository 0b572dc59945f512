// Generates the TypeScript client from the OpenRPC document with @open-rpc/generator.
// Usage: node generate.js [DOCUMENT] [OUT_DIR]
// (defaults: ../../rpc-spec/openrpc.json and ./generated; the client is OUT_DIR/src/index.ts).
// Exits 1 when the generator rejects the document.
const fs = require("fs");
const path = require("path");
const generate = require("@open-rpc/generator").default;

const document = path.resolve(process.argv[2] || path.join(__dirname, "../../rpc-spec/openrpc.json"));
const out = path.resolve(process.argv[3] || path.join(__dirname, "generated"));

fs.rmSync(out, { recursive: true, force: true });
generate({
  openrpcDocument: JSON.parse(fs.readFileSync(document, "utf8")),
  components: [{ type: "client", language: "typescript", name: "rpchub", outPath: out }],
}).then(
  () => console.log(`generated ${path.relative(process.cwd(), path.join(out, "src/index.ts"))} from ${document}`),
  (e) => {
    console.error(`@open-rpc/generator failed on ${document}: ${e && e.message ? e.message : e}`);
    process.exit(1);
  },
);
