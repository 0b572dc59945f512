//! `rpchub repl URL`: an interactive JSON-RPC session, with a line editor (history in
//! `~/.rpchub_history`, Tab completing the method names the server lists in `rpc.discover`).
//!
//! A line is `METHOD`, `METHOD PARAMS` (one JSON value, or `KEY=VALUE` words as for `rpchub
//! call`), or a raw JSON-RPC message (`{...}` or a batch `[...]`) sent as it is. Each answer
//! is printed before the next prompt: the result as JSON, or `error CODE: MESSAGE`.
//! Notifications (subscription events, stream lines, cursor changes) are printed as they
//! arrive, as the JSON-RPC message the server sent. `help` lists the methods; end of input
//! (Ctrl-D, or the end of a piped stdin) ends the session.
//!
//! The editor blocks on the terminal, so it runs on a thread of its own and hands each line
//! to the session with a channel to answer on once the line's answer is printed; the session
//! owns the connection and prints everything, so output keeps the order it arrived in.

use super::conn::{Conn, error_line, params_from_words};
use anyhow::{Context as _, Result, anyhow};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a line waits for its answer before the prompt comes back anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// A line typed, with the way to say its answer has been printed.
type Line = (String, oneshot::Sender<()>);

/// Runs the session until the input ends (exit 0) or the connection does (an error).
pub(crate) async fn run(url: &str, token: Option<&str>) -> Result<()> {
    let mut conn = Conn::connect(url, token).await?;
    let doc = conn.call("rpc.discover", None, |n| print_line(&n)).await?;
    let mut methods: Vec<String> = doc["result"]["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    methods.push("rpc.discover".into());
    methods.sort();
    let (tx, mut lines) = mpsc::channel::<Line>(1);
    // A plain thread, not a blocking task: the runtime must not wait for a read of the
    // terminal when the session ends for another reason.
    let editor_methods = methods.clone();
    std::thread::Builder::new()
        .name("repl-editor".into())
        .spawn(move || edit(editor_methods, tx))
        .context("starting the line editor")?;
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some((line, done)) = line else { return Ok(()) };
                answer(&mut conn, &methods, &line).await?;
                let _ = done.send(());
            }
            msg = conn.next() => match msg? {
                Some(m) => print_line(&m),
                None => return Err(anyhow!(conn.ended())),
            },
        }
    }
}

/// Sends one typed line and prints its answer (and the notifications before it).
async fn answer(conn: &mut Conn, methods: &[String], line: &str) -> Result<()> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(());
    }
    if line == "help" {
        println!("methods: {}", methods.join(" "));
        println!("a line: METHOD [JSON | KEY=VALUE ...], or a JSON-RPC message; Ctrl-D ends");
        return Ok(());
    }
    let id = if line.starts_with('{') || line.starts_with('[') {
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("not JSON: {e}");
                return Ok(());
            }
        };
        conn.send(&msg).await?;
        match &msg {
            // A batch answers with one array; a message without an id is a notification
            // and has no answer.
            Value::Array(_) => Some(Value::Null),
            Value::Object(o) => o.get("id").cloned(),
            _ => None,
        }
    } else {
        let (method, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let words: Vec<&str> = if rest.trim_start().starts_with(['{', '[']) {
            vec![rest.trim()]
        } else {
            rest.split_whitespace().collect()
        };
        let params = match params_from_words(&words) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Ok(());
            }
        };
        Some(json!(conn.send_request(method, params).await?))
    };
    let Some(id) = id else { return Ok(()) };
    let wait = tokio::time::timeout(ANSWER_WAIT, async {
        loop {
            match conn.next().await? {
                None => return Err(anyhow!(conn.ended())),
                Some(v) if v.is_array() && id.is_null() => {
                    print_line(&v);
                    return Ok(());
                }
                Some(v) if v.get("id") == Some(&id) && v.get("method").is_none() => {
                    match v.get("error") {
                        Some(e) => eprintln!("{}", error_line(e)),
                        None => println!("{}", serde_json::to_string_pretty(&v["result"])?),
                    }
                    return Ok(());
                }
                Some(v) => print_line(&v),
            }
        }
    });
    match wait.await {
        Ok(r) => r,
        Err(_) => {
            eprintln!("no answer within {} s", ANSWER_WAIT.as_secs());
            Ok(())
        }
    }
}

fn print_line(v: &Value) {
    println!("{v}");
}

/// The editor's thread: reads lines until the input ends, keeping the history file.
fn edit(methods: Vec<String>, tx: mpsc::Sender<Line>) {
    let mut editor = match Editor::<Methods, rustyline::history::DefaultHistory>::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rpchub: the line editor cannot start: {e}");
            return;
        }
    };
    editor.set_helper(Some(Methods(methods)));
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".rpchub_history"));
    if let Some(h) = &history {
        // No history yet is the usual first run.
        let _ = editor.load_history(h);
    }
    loop {
        match editor.readline("rpchub> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let (done, answered) = oneshot::channel();
                if tx.blocking_send((line, done)).is_err() {
                    break;
                }
                // Dropped unanswered only when the session has ended.
                if answered.blocking_recv().is_err() {
                    break;
                }
            }
            // Ctrl-C clears the line, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("rpchub: reading input: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!("rpchub: the history was not saved to {}: {e}", h.display());
    }
}

/// Completes the first word of a line from the server's method names.
struct Methods(Vec<String>);

impl Completer for Methods {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let word = &line[..pos];
        if word.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let found = self
            .0
            .iter()
            .filter(|m| m.starts_with(word))
            .map(|m| Pair { display: m.clone(), replacement: format!("{m} ") })
            .collect();
        Ok((0, found))
    }
}

impl Hinter for Methods {
    type Hint = String;
}
impl Highlighter for Methods {}
impl Validator for Methods {}
impl Helper for Methods {}
