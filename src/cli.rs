//! The command line: `serve` runs the node; the other commands are small clients for trying
//! and scripting a running node.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::core::params::{ArrayParams, ObjectParams};
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::ws_client::WsClientBuilder;
use rpchub::Config;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Calls a method: `rpchub call ws://127.0.0.1:7410/ws/rpc info` (or an http://.../rpc URL).
    Call {
        /// `ws://HOST:PORT/ws/rpc` or `http://HOST:PORT/rpc`.
        url: String,
        /// Method name.
        method: String,
        /// Params as JSON: an array (by position) or an object (by name).
        params: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Subscribes and prints one JSON line per event (the snapshot first) until interrupted.
    Subscribe {
        /// `ws://HOST:PORT/ws/rpc`.
        url: String,
        /// Channel name.
        channel: String,
        /// Recover from a position: `EPOCH:OFFSET`.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Publishes one message and prints its `{"epoch","offset"}`.
    Publish {
        /// `ws://HOST:PORT/ws/rpc` or `http://HOST:PORT/rpc`.
        url: String,
        /// Channel name.
        channel: String,
        /// Data as JSON (a bare word is sent as a string).
        data: String,
        /// Event name.
        #[arg(long)]
        event: Option<String>,
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
    /// Load generator for sizing a deployment: `rpchub bench fanout|rpc|idle|storm`.
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
            let params = params.map(|p| parse_json(&p)).transpose()?;
            let result = call(&url, &method, params, token.token.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Publish { url, channel, data, event, token } => {
            let mut params = serde_json::json!({ "channel": channel, "data": parse_json(&data).unwrap_or(Value::String(data)) });
            if let Some(e) = event {
                params["event"] = Value::String(e);
            }
            let result = call(&url, "publish", Some(params), token.token.as_deref()).await?;
            println!("{result}");
        }
        Command::Subscribe { url, channel, since, token } => {
            subscribe(&url, &channel, since, token.token.as_deref()).await?
        }
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

async fn call(url: &str, method: &str, params: Option<Value>, token: Option<&str>) -> Result<Value> {
    let result = if url.starts_with("ws://") || url.starts_with("wss://") {
        let client =
            WsClientBuilder::default().set_headers(headers(token)?).build(url).await.context("connect")?;
        request(&client, method, params).await
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let client =
            HttpClientBuilder::default().set_headers(headers(token)?).build(url).context("client")?;
        request(&client, method, params).await
    } else {
        bail!("{url}: use ws://HOST:PORT/ws/rpc or http://HOST:PORT/rpc");
    };
    result.map_err(|e| match e {
        jsonrpsee::core::ClientError::Call(err) => {
            anyhow!("{method}: error {}: {}", err.code(), err.message())
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

async fn subscribe(url: &str, channel: &str, since: Option<String>, token: Option<&str>) -> Result<()> {
    let client =
        WsClientBuilder::default().set_headers(headers(token)?).build(url).await.context("connect")?;
    let mut p = ObjectParams::new();
    p.insert("channel", channel).expect("a string serializes; qed");
    if let Some(s) = since {
        let (epoch, offset) = s.rsplit_once(':').ok_or_else(|| anyhow!("--since takes EPOCH:OFFSET"))?;
        let offset: u64 = offset.parse().context("--since: the offset is not a number")?;
        p.insert("since", serde_json::json!({"epoch": epoch, "offset": offset}))
            .expect("JSON serializes; qed");
    }
    let mut sub = client
        .subscribe::<Value, _>("subscribe", p, "unsubscribe")
        .await
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            ev = sub.next() => match ev {
                Some(Ok(v)) => {
                    // A closed pipe (`| head`) ends the command quietly.
                    if writeln!(stdout, "{v}").and_then(|_| stdout.flush()).is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => bail!("bad notification: {e}"),
                None => bail!("the server ended the connection"),
            },
            _ = rpchub::shutdown::signal() => return Ok(()),
        }
    }
}
