// Replays every example of an OpenRPC document against a live server with @open-rpc/test-coverage
// (its examples rule only): each example's params are sent to the document's first server (the
// WebSocket endpoint, its `{host}` variable set to HOST, the token as `?token=`), and the result
// must equal the example's or, where it differs per run (ids, epochs, offsets), validate against
// the method's result schema.
// Usage: node examples.mjs HOST TOKEN [DOCUMENT]. Prints one JSON line: every call, valid or
// not, with the reason; exits 1 unless every example passed. Stops by itself within 30 s.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import utils from "@open-rpc/schema-utils-js";
import coverageModule from "@open-rpc/test-coverage";
import examplesRuleModule from "@open-rpc/test-coverage/build/rules/examples-rule.js";

const coverage = coverageModule.default;
const ExamplesRule = examplesRuleModule.default;
// The calls are reported below, as one JSON line.
const silent = { onBegin() {}, onTestBegin() {}, onTestEnd() {}, onEnd() {} };

const [host, token, path = fileURLToPath(new URL("../../rpc-spec/openrpc.json", import.meta.url))] =
  process.argv.slice(2);
if (!host || !token) {
  console.error("usage: node examples.mjs HOST TOKEN [DOCUMENT]");
  process.exit(2);
}
setTimeout(() => {
  console.error("examples: no answer within 30 s");
  process.exit(3);
}, 30_000).unref();

const doc = await utils.parseOpenRPCDocument(JSON.parse(readFileSync(path, "utf8")));

// One WebSocket connection per server URL; answers are matched by id (subscription
// notifications, which have none, are ignored).
const sockets = new Map();
let nextId = 1;
function socket(url) {
  if (!sockets.has(url)) {
    sockets.set(
      url,
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url, { handshakeTimeout: 10_000 });
        const pending = new Map();
        ws.on("message", (text) => {
          const msg = JSON.parse(text);
          if (msg.id !== undefined && pending.has(msg.id)) {
            pending.get(msg.id)(msg);
            pending.delete(msg.id);
          }
        });
        ws.once("open", () => resolve({ ws, pending }));
        ws.once("error", reject);
      }),
    );
  }
  return sockets.get(url);
}

const transport = async (serverUrl, method, params) => {
  const url = `${serverUrl.replace("{host}", host)}?token=${encodeURIComponent(token)}`;
  const { ws, pending } = await socket(url);
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${method}: no answer within 10 s`)), 10_000);
    pending.set(id, (msg) => {
      clearTimeout(timer);
      resolve(msg);
    });
    ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  });
};

const calls = await coverage({
  openrpcDocument: doc,
  transport,
  reporters: [silent],
  rules: [new ExamplesRule()],
  skip: [],
  only: [],
});
for (const s of sockets.values()) (await s).ws.close();
const report = calls.map((c) => ({
  method: c.methodName,
  title: c.title,
  params: c.params,
  valid: c.valid === true,
  exact: c.valid === true && JSON.stringify(c.result) === JSON.stringify(c.expectedResult),
  ...(c.valid === true ? {} : { reason: c.reason ?? String(c.requestError ?? c.error) }),
}));
console.log(JSON.stringify({ passed: report.filter((c) => c.valid).length, calls: report }));
process.exit(report.length > 0 && report.every((c) => c.valid) ? 0 : 1);
