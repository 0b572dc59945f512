//! The OpenRPC document read by independent tools, against live servers: the TypeScript client
//! generated from it by `@open-rpc/generator` and compiled with `tsc` (`clients/typescript`),
//! the document validated by `@open-rpc/schema-utils-js` and its examples replayed by
//! `@open-rpc/test-coverage` (`tests/spec-tools`). `.ci/run` installs their packages (`npm ci`)
//! and sets `RPCHUB_CLIENT_TESTS=required`; elsewhere a test whose node or packages are missing
//! says it was skipped.

use crate::support::*;
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest any one tool may run (a cold `tsc` takes a few seconds).
const TOOL_LIMIT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn client_dir() -> PathBuf {
    root().join("clients/typescript")
}

fn tools_dir() -> PathBuf {
    root().join("tests/spec-tools")
}

/// `Ok` when node runs and `dir` has `package` installed; otherwise why not. Under
/// `RPCHUB_CLIENT_TESTS=required` (CI) a missing tool fails the test instead of skipping it.
fn ready(dir: &Path, package: &str) -> bool {
    let why = if !dir.join("node_modules").join(package).exists() {
        Some(format!("run `npm ci` in {}", dir.display()))
    } else {
        match Command::new("node").arg("--version").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!("node --version: {}", o.status)),
            Err(e) => Some(format!("node: {e}")),
        }
    };
    let Some(why) = why else { return true };
    skip_unless_required("RPCHUB_CLIENT_TESTS", &why);
    false
}

/// Runs `node ARGS` in `dir`, killed if it is not done within [`TOOL_LIMIT`].
fn node(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new("node")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TOOL_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {args:?} did not finish within {TOOL_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// [`node`] on a blocking thread, so that the in-process server keeps serving meanwhile.
async fn node_async(dir: PathBuf, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || node(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// The last line of a tool's output, as JSON (with everything it wrote when it is not).
fn report(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!("{what}: {}\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}

fn committed_openrpc() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("rpc-spec/openrpc.json")).unwrap()).unwrap()
}

fn method_names(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        doc["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

/// A scratch path for this test run: under `dir` (so that node finds its packages), removed
/// by the caller.
fn scratch(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("generated-{name}-{}", std::process::id()))
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_typescript_client_calls_every_method_and_receives_a_live_publication() {
    let dir = client_dir();
    if !ready(&dir, "@open-rpc/generator") {
        return;
    }
    // Generated from the committed document and compiled, every time: a document the
    // generator or the compiler rejects fails here.
    let generated = node_async(dir.clone(), vec!["generate.js".into()]).await;
    assert!(generated.status.success(), "generate: {}", String::from_utf8_lossy(&generated.stderr));
    let compiled = node_async(
        dir.clone(),
        vec!["node_modules/typescript/bin/tsc".into(), "-p".into(), "tsconfig.json".into()],
    )
    .await;
    assert!(
        compiled.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&compiled.stdout),
        String::from_utf8_lossy(&compiled.stderr)
    );

    let mut c = config();
    // The conversation methods are called on the test's channel: its namespace keeps presence.
    let clients = rpchub::config::NamespaceConfig { presence: true, ..Default::default() };
    c.namespaces.insert("clients".into(), clients);
    let server = start(c).await;
    let ch = channel("clients");
    let out =
        node_async(dir, vec!["build/test/live.js".into(), server.addr.to_string(), ADMIN.into(), ch.clone()])
            .await;
    let seen = report("the TypeScript client", &out);
    assert!(out.status.success(), "{seen}\n{}", String::from_utf8_lossy(&out.stderr));
    // Every method of the document was called through the generated client.
    let called: Vec<String> = {
        let mut c: Vec<String> = seen["called"].as_object().unwrap().keys().cloned().collect();
        c.sort();
        c
    };
    assert_eq!(called, method_names(&committed_openrpc()));
    assert_eq!(seen["called"]["ping"], "pong");
    assert_eq!(seen["called"]["auth"]["sub"], "admin");
    // The subscription's snapshot, then the live publication at the next offset.
    let events = seen["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{seen}");
    assert_eq!((events[0]["type"].as_str(), events[0]["channel"].as_str()), (Some("snapshot"), Some(&*ch)));
    let next = events[0]["offset"].as_u64().unwrap() + 1;
    assert_eq!(events[1]["type"], "publication");
    assert_eq!(events[1]["offset"], next);
    assert_eq!(events[1]["data"], json!({"from": "typescript", "n": 1}));
    assert_eq!(seen["called"]["publish"]["offset"], next);
    assert_eq!(seen["called"]["history"]["publications"][0]["offset"], next);
    assert_eq!(seen["called"]["unsubscribe"], true);
    assert_eq!(seen["called"]["presence_stats"], json!({"clients": 1, "users": 1}));
    assert_eq!(seen["called"]["unread"][&ch], json!({"count": 1, "capped": false}));
    // Errors arrive with the document's codes; HTTP works with the same client.
    assert_eq!(seen["refused"], json!({"code": -32005, "data": {"code": "invalid_request"}}));
    assert_eq!(seen["overHttp"]["published"], next + 1);
    // What the client published is what a plain WebSocket subscriber reads.
    let mut w = ws(server.addr, None).await;
    let (_, snap) = subscribe(&mut w, json!({"channel": ch})).await;
    assert_eq!(snap["publications"][0]["data"], json!({"from": "typescript", "n": 1}));
    assert_eq!(snap["publications"][1]["data"], json!({"from": "http"}));
    server.shutdown();
}

#[test]
fn a_document_the_generator_cannot_turn_into_a_client_breaks_the_typescript_build() {
    let dir = client_dir();
    if !ready(&dir, "@open-rpc/generator") {
        return;
    }
    // A method name with a dot, as `rpc.discover` would be if it were listed: generated, but
    // not an identifier, so `tsc` fails.
    let mut doc = committed_openrpc();
    let mut dotted = doc["methods"].as_array().unwrap().iter().find(|m| m["name"] == "ping").unwrap().clone();
    dotted["name"] = json!("rpc.ping");
    doc["methods"].as_array_mut().unwrap().push(dotted);
    let out = scratch(&dir, "dotted");
    let path = PathBuf::from(format!("{}.json", out.display()));
    write_json(&path, &doc);
    let generated = node(&dir, &["generate.js", path.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let tsconfig = out.join("tsconfig.check.json");
    write_json(
        &tsconfig,
        &json!({"extends": "../tsconfig.json", "compilerOptions": {"noEmit": true}, "files": ["src/index.ts"]}),
    );
    let compiled = node(&dir, &["node_modules/typescript/bin/tsc", "-p", tsconfig.to_str().unwrap()]);
    let errors = String::from_utf8_lossy(&compiled.stdout).to_string();
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!compiled.status.success(), "tsc accepted a client with a dotted method name");
    assert!(errors.contains("src/index.ts"), "{errors}");

    // A document that is not valid OpenRPC: the generator refuses it.
    let mut doc = committed_openrpc();
    doc["methods"][0]["paramStructure"] = json!("sideways");
    let out = scratch(&dir, "invalid");
    let path = PathBuf::from(format!("{}.json", out.display()));
    write_json(&path, &doc);
    let generated = node(&dir, &["generate.js", path.to_str().unwrap(), out.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::remove_file(&path).unwrap();
    assert!(!generated.status.success(), "the generator accepted an invalid document");
    assert!(String::from_utf8_lossy(&generated.stderr).contains("paramStructure"));
}

#[test]
fn schema_utils_validates_the_document_and_rejects_broken_ones() {
    let dir = tools_dir();
    if !ready(&dir, "@open-rpc/schema-utils-js") {
        return;
    }
    let out = node(&dir, &["validate.mjs"]);
    let r = report("validate.mjs", &out);
    assert!(out.status.success(), "{r}");
    assert_eq!(r["valid"], true);
    let mut validated: Vec<String> =
        r["methods"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    validated.sort();
    assert_eq!(validated, method_names(&committed_openrpc()));

    // The tool does reject: a value the meta-schema does not allow, a reference to nowhere.
    let broken = |edit: &dyn Fn(&mut Value), name: &str| {
        let mut doc = committed_openrpc();
        edit(&mut doc);
        let path = scratch(&dir, name).with_extension("json");
        write_json(&path, &doc);
        let out = node(&dir, &["validate.mjs", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        let r = report("validate.mjs", &out);
        assert!(!out.status.success(), "{name}: {r}");
        r
    };
    let r = broken(&|d| d["methods"][0]["paramStructure"] = json!("sideways"), "enum");
    assert_eq!((r["valid"].clone(), r["stage"].clone()), (json!(false), json!("validate")), "{r}");
    let r = broken(
        &|d| d["methods"][1]["result"]["schema"] = json!({"$ref": "#/components/schemas/Nope"}),
        "ref",
    );
    assert_eq!((r["valid"].clone(), r["stage"].clone()), (json!(false), json!("dereference")), "{r}");
}

/// Every example, replayed by `@open-rpc/test-coverage`'s examples rule against a server with
/// the demo feed and the admin token the examples use: each passes, by equal result or, where
/// the result differs per run (ids, epochs, offsets), by the method's result schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_coverage_replays_every_example_against_a_live_server() {
    let dir = tools_dir();
    if !ready(&dir, "@open-rpc/test-coverage") {
        return;
    }
    let mut c = config();
    c.admin_token = Some(rpchub::config::Secret("change-me-please".into()));
    c.demo = true;
    let server = start(c.with_demo_namespaces()).await;
    let mut w = ws(server.addr, Some("change-me-please")).await;
    let deadline = Instant::now() + WAIT;
    while call(&mut w, "history", json!({"channel": "trades:SOL", "limit": 1})).await["result"]["offset"] == 0
    {
        assert!(Instant::now() < deadline, "the demo publishes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out =
        node_async(dir, vec!["examples.mjs".into(), server.addr.to_string(), "change-me-please".into()])
            .await;
    let r = report("examples.mjs", &out);
    assert!(out.status.success(), "{r}");
    let doc = committed_openrpc();
    let examples: usize =
        doc["methods"].as_array().unwrap().iter().map(|m| m["examples"].as_array().unwrap().len()).sum();
    let calls = r["calls"].as_array().unwrap();
    assert_eq!((r["passed"].as_u64(), calls.len()), (Some(examples as u64), examples), "{r}");
    assert!(calls.iter().all(|c| c["valid"] == true), "{r}");
    // The examples whose results do not change from run to run matched exactly.
    for m in ["ping", "unsubscribe", "auth"] {
        assert!(calls.iter().any(|c| c["method"] == m && c["exact"] == true), "{m}: {r}");
    }
    // Sent by position, a skipped optional param as null.
    let sub = calls.iter().find(|c| c["method"] == "subscribe").unwrap();
    assert_eq!(sub["params"], json!(["trades:SOL", null, 2]));
    server.shutdown();
}
