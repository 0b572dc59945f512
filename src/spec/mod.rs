//! The machine-readable descriptions of the API, generated from the code: the OpenRPC document
//! of the JSON-RPC methods ([`openrpc`]), built from the methods' one definition, and the OpenAPI
//! document of the HTTP routes ([`openapi`]), built from the route table and the same types,
//! both with the JSON Schemas of their types made by one generator ([`schema`]). `rpchub spec`
//! writes them to `rpc-spec/openrpc.json` and `openapi/openapi.json`; `rpchub spec --check`
//! fails when a committed file differs from what the code generates.

pub mod openapi;
pub mod openrpc;
pub mod schema;

use std::path::{Path, PathBuf};

/// A generated document: where it is committed, and its text.
#[derive(Debug)]
pub struct Document {
    /// Path relative to the repository root.
    pub path: &'static str,
    /// The JSON text, pretty-printed, with a final newline.
    pub text: String,
}

/// Every generated document.
pub fn documents() -> Vec<Document> {
    vec![
        Document { path: "rpc-spec/openrpc.json", text: pretty(&openrpc::document()) },
        Document { path: "openapi/openapi.json", text: pretty(&openapi::document()) },
    ]
}

/// `v` as committed: two-space indentation and a final newline.
pub fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a JSON value serializes; qed");
    s.push('\n');
    s
}

/// Writes every document under `root`; returns the paths written.
pub fn write(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    documents()
        .into_iter()
        .map(|d| {
            let path = root.join(d.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, d.text)?;
            Ok(path)
        })
        .collect()
}

/// Compares every document under `root` with what the code generates: `Err` names the first
/// difference (the file, the line, both versions of it).
pub fn check(root: &Path) -> Result<(), String> {
    for d in documents() {
        let path = root.join(d.path);
        let committed = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e} (run `rpchub spec` to write it)", path.display()))?;
        if committed == d.text {
            continue;
        }
        let (mut c, mut g) = (committed.lines(), d.text.lines());
        for n in 1.. {
            match (c.next(), g.next()) {
                (Some(a), Some(b)) if a == b => continue,
                (a, b) => {
                    return Err(format!(
                        "{} differs from what the code generates at line {n}:\n  committed: {}\n  generated: {}\n\
                         run `rpchub spec` to write it again",
                        path.display(),
                        a.unwrap_or("(end of file)"),
                        b.unwrap_or("(end of file)")
                    ));
                }
            }
        }
    }
    Ok(())
}
