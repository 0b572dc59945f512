//! The command line: `serve` runs the node; the other commands are small clients for trying
//! and scripting a running node.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::{ArrayParams, ObjectParams};
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::ws_client::WsClientBuilder;
use rpchub::Config;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

mod conn;
mod repl;
mod subscribe;

/// rpchub: JSON-RPC 2.0 over WebSocket with gap-free channel subscriptions.
#[derive(Parser, Debug)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Runs the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Calls a method and prints its result as JSON: `rpchub call ws://127.0.0.1:7410/ws/rpc
    /// history channel=trades:SOL limit=2` (or an http://.../rpc URL). A JSON-RPC error exits 1
    /// with one line on stderr: `rpchub: METHOD: error CODE: MESSAGE (data: ...)`.
    Call {
        /// `ws://HOST:PORT/ws/rpc` or `http://HOST:PORT/rpc`.
        url: String,
        /// Method name.
        method: String,
        /// Params: one JSON value (an array by position, an object by name), or `KEY=VALUE`
        /// words making an object (each value JSON when it parses, else a string).
        params: Vec<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Follows channels on one connection and prints one JSON line per event (each snapshot,
    /// then its publications, then live ones) until interrupted; reconnects with backoff and
    /// resumes each channel from the last position printed.
    Subscribe {
        /// `ws://HOST:PORT/ws/rpc`.
        url: String,
        /// Channel names (or patterns, where the namespace allows them).
        #[arg(required = true)]
        channels: Vec<String>,
        /// Start after a position of the one channel given: `EPOCH:OFFSET`.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Publishes and prints each answer's `{"epoch","offset"}`; DATA `-` publishes every
    /// non-empty line of stdin (each must be JSON; a line that is not stops with its number).
    Publish {
        /// `ws://HOST:PORT/ws/rpc` or `http://HOST:PORT/rpc`.
        url: String,
        /// Channel name.
        channel: String,
        /// Data as JSON (a bare word is sent as a string), or `-` for stdin's lines.
        data: String,
        /// Event name.
        #[arg(long)]
        event: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// An interactive JSON-RPC session: `METHOD [PARAMS]` lines, Tab completes method names
    /// (from `rpc.discover`), history in ~/.rpchub_history, notifications printed as they come.
    Repl {
        /// `ws://HOST:PORT/ws/rpc`.
        url: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Mints an HS256 JWT with RPCHUB_JWT_SECRET, for testing.
    Token {
        /// Subject.
        #[arg(long)]
        sub: String,
        /// Channel patterns the holder may subscribe to (comma separated).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Channel patterns the holder may publish to (comma separated).
        #[arg(long, value_delimiter = ',')]
        publish: Vec<String>,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Load generator for sizing a deployment: `rpchub bench fanout|market|rpc|idle|storm`.
    Bench(rpchub_bench::BenchArgs),
    /// Writes the API documents generated from the code (rpc-spec/openrpc.json, openapi/openapi.json); with `--check`,
    /// fails naming the first difference when a committed one differs instead.
    Spec {
        /// Compare instead of writing: exit 1 when a committed document is not what the code
        /// generates.
        #[arg(long)]
        check: bool,
        /// The repository's root, where the documents are committed.
        #[arg(long, default_value = ".")]
        root: std::path::PathBuf,
    },
}

/// The token a client command sends.
#[derive(Args, Debug)]
pub(crate) struct TokenArg {
    /// Token sent as `Authorization: Bearer` (default: RPCHUB_TOKEN).
    #[arg(long, env = "RPCHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `rpchub serve` flags; each overrides the config file and the environment.
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:7410).
    #[arg(long)]
    pub listen: Option<String>,
    /// TOML config file (see rpchub.example.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `memory`, `redis://HOST:PORT` or `redis+cluster://HOST:PORT[,HOST:PORT...]`.
    #[arg(long)]
    pub broker: Option<String>,
    /// Runs the built-in market simulator (trades:*, l2Book:*).
    #[arg(long)]
    pub demo: bool,
    /// Node id shown by `info`.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Log filter, e.g. `info` or `rpchub=debug` (RUST_LOG wins when set).
    #[arg(long)]
    pub log: Option<String>,
    /// `text` (readable lines, the default) or `json` (one object per line).
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Any config key: `--set limits.max_connections=5000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ServeArgs {
    /// The configuration these flags, the environment and the file describe.
    pub(crate) fn config(&self) -> Result<Config> {
        let mut overrides = Vec::new();
        let mut flag = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                overrides.push((k.to_string(), v.clone()));
            }
        };
        flag("listen", &self.listen);
        flag("broker", &self.broker);
        flag("node_id", &self.node_id);
        flag("log", &self.log);
        flag("log_format", &self.log_format);
        if self.demo {
            overrides.push(("demo".into(), "true".into()));
        }
        for kv in &self.set {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--set {kv}: expected KEY=VALUE"))?;
            overrides.push((k.trim().to_string(), v.trim().to_string()));
        }
        let config = Config::load(self.config.as_deref(), &overrides)?;
        Ok(if config.demo { config.with_demo_namespaces() } else { config })
    }
}

/// Runs a client command.
pub(crate) async fn run_client(cmd: Command) -> Result<()> {
    match cmd {
        Command::Call { url, method, params, token } => {
            let params = conn::params_from_words(&params)?;
            let result = call(&url, &method, params, token.token.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Publish { url, channel, data, event, token } => {
            publish(&url, &channel, &data, event, token.token.as_deref()).await?
        }
        Command::Subscribe { url, channels, since, token } => {
            subscribe::run(&url, channels, since, token.token).await?
        }
        Command::Repl { url, token } => repl::run(&url, token.token.as_deref()).await?,
        Command::Token { sub, channels, publish, ttl } => {
            let secret = std::env::var("RPCHUB_JWT_SECRET").context("RPCHUB_JWT_SECRET is not set")?;
            let now = rpchub::broker::memory::now_ms() / 1000;
            let claims = rpchub::auth::Claims {
                sub,
                exp: now + ttl.as_secs(),
                nbf: None,
                channels: (!channels.is_empty()).then_some(channels),
                publish: (!publish.is_empty()).then_some(publish),
            };
            println!("{}", rpchub::auth::mint_hs256(&secret, &claims).map_err(|e| anyhow!(e))?);
        }
        Command::Bench(args) => {
            // A bench runs its own client threads and blocks until it is over.
            tokio::task::spawn_blocking(move || rpchub_bench::run(args)).await.context("bench")??
        }
        Command::Spec { check: true, root } => rpchub::spec::check(&root).map_err(|e| anyhow!(e))?,
        Command::Spec { check: false, root } => {
            for path in
                rpchub::spec::write(&root).with_context(|| format!("writing under {}", root.display()))?
            {
                println!("wrote {}", path.display());
            }
        }
        Command::Serve(_) => unreachable!("serve is handled by main"),
    }
    Ok(())
}

/// One JSON-RPC call as a POST to `url`: the answer object, or the refusal with the server's
/// message (`URL: HTTP 401: ...`).
async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    method: &str,
    params: Option<Value>,
) -> Result<Value> {
    let mut call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if let Some(p) = params {
        call["params"] = p;
    }
    let mut req = client.post(url).header("content-type", "application/json").body(call.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| format!("{url}: cannot connect"))?;
    let status = res.status();
    let body = res.text().await.with_context(|| format!("{url}: reading the answer"))?;
    let answer: Option<Value> = serde_json::from_str(&body).ok();
    if !status.is_success() {
        // The gate's `{"success":false,"error":{"message":...}}`, or a JSON-RPC error object.
        let message = answer
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        bail!("{url}: HTTP {}: {message}", status.as_u16());
    }
    answer.ok_or_else(|| {
        anyhow!("{url}: an answer that is not JSON: {}", body.chars().take(200).collect::<String>())
    })
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).with_context(|| format!("not valid JSON: {s}"))
}

fn headers(token: Option<&str>) -> Result<jsonrpsee::http_client::HeaderMap> {
    let mut h = jsonrpsee::http_client::HeaderMap::new();
    if let Some(t) = token {
        h.insert(
            "authorization",
            format!("Bearer {t}").parse().context("the token is not a valid header value")?,
        );
    }
    Ok(h)
}

/// Calls `method` once and returns its result.
async fn call(url: &str, method: &str, params: Option<Value>, token: Option<&str>) -> Result<Value> {
    Caller::connect(url, token).await?.call(method, params).await
}

/// Publishes `data` to `channel` and prints the answer; `-` publishes each non-empty line of
/// stdin in turn, on one connection, and stops at the first line that is not JSON (naming its
/// number; the lines before it are published).
async fn publish(
    url: &str,
    channel: &str,
    data: &str,
    event: Option<String>,
    token: Option<&str>,
) -> Result<()> {
    let mut caller = Caller::connect(url, token).await?;
    let params = |data: Value| {
        let mut p = serde_json::json!({ "channel": channel, "data": data });
        if let Some(e) = &event {
            p["event"] = Value::String(e.clone());
        }
        p
    };
    if data != "-" {
        let data = parse_json(data).unwrap_or_else(|_| Value::String(data.to_string()));
        println!("{}", caller.call("publish", Some(params(data))).await?);
        return Ok(());
    }
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0;
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let data = serde_json::from_str(&line).map_err(|e| {
            anyhow!("stdin line {number} is not JSON ({e}); it and the lines after it were not published")
        })?;
        let answer = caller
            .call("publish", Some(params(data)))
            .await
            .with_context(|| format!("stdin line {number}"))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}").and_then(|_| out.flush()).context("writing stdout")?;
    }
    Ok(())
}

/// A connection for calls: ws:// on [`conn::Conn`] (which reports a refused upgrade with the
/// server's reason), http(s):// and wss:// on jsonrpsee's clients.
enum Caller {
    Ws(Box<conn::Conn>),
    Wss(jsonrpsee::ws_client::WsClient),
    /// Plain `http://`: one POST per call, whose refusal (401, 429, ...) is told with the
    /// server's message.
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
    Https(jsonrpsee::http_client::HttpClient),
}

impl Caller {
    async fn connect(url: &str, token: Option<&str>) -> Result<Caller> {
        Ok(if url.starts_with("ws://") {
            Caller::Ws(Box::new(conn::Conn::connect(url, token).await?))
        } else if url.starts_with("wss://") {
            Caller::Wss(
                WsClientBuilder::default()
                    .set_headers(headers(token)?)
                    .build(url)
                    .await
                    .context("connect")?,
            )
        } else if url.starts_with("http://") {
            Caller::Http {
                client: reqwest::Client::new(),
                url: url.to_string(),
                token: token.map(str::to_string),
            }
        } else if url.starts_with("https://") {
            Caller::Https(
                HttpClientBuilder::default().set_headers(headers(token)?).build(url).context("client")?,
            )
        } else {
            bail!("{url}: use ws://HOST:PORT/ws/rpc or http://HOST:PORT/rpc");
        })
    }

    /// The result of `method`; a JSON-RPC error is `METHOD: error CODE: MESSAGE (data: ..)`.
    async fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value> {
        let mut answer = match self {
            Caller::Ws(c) => c.call(method, params, |_| {}).await?,
            Caller::Http { client, url, token } => {
                post(client, url, token.as_deref(), method, params).await?
            }
            Caller::Wss(c) => return jsonrpsee_result(method, request(c, method, params).await),
            Caller::Https(c) => return jsonrpsee_result(method, request(c, method, params).await),
        };
        match answer.get("error") {
            Some(e) => Err(anyhow!("{method}: {}", conn::error_line(e))),
            None => Ok(answer["result"].take()),
        }
    }
}

/// The result of a call made through jsonrpsee's clients; an error as [`Caller::call`] says it.
fn jsonrpsee_result(method: &str, result: Result<Value, jsonrpsee::core::ClientError>) -> Result<Value> {
    result.map_err(|e| match e {
        jsonrpsee::core::ClientError::Call(err) => {
            anyhow!("{method}: {}", conn::error_line(&serde_json::to_value(&err).unwrap_or_default()))
        }
        e => anyhow!("{method}: {e}"),
    })
}

async fn request<C: ClientT>(
    c: &C,
    method: &str,
    params: Option<Value>,
) -> Result<Value, jsonrpsee::core::ClientError> {
    match params {
        None => c.request(method, ArrayParams::new()).await,
        Some(Value::Array(items)) => {
            let mut p = ArrayParams::new();
            for i in items {
                p.insert(i).expect("a JSON value serializes; qed");
            }
            c.request(method, p).await
        }
        Some(Value::Object(map)) => {
            let mut p = ObjectParams::new();
            for (k, v) in map {
                p.insert(&k, v).expect("a JSON value serializes; qed");
            }
            c.request(method, p).await
        }
        Some(other) => {
            let mut p = ArrayParams::new();
            p.insert(other).expect("a JSON value serializes; qed");
            c.request(method, p).await
        }
    }
}
