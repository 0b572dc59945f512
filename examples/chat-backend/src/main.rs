//! `chat-backend`: the example backend on a TCP port, for rpchub's `[backend] url`.

use chat_backend::{Config, DEFAULT_LISTEN, DEFAULT_RPCHUB, DEMO_PUBLISH_TOKEN};
use clap::Parser;
use std::time::Duration;

/// An example chat backend for rpchub (see examples/chat-backend/README.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (rpchub.toml's backend.url points here).
    #[arg(long, env = "CHAT_BACKEND_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// rpchub's base URL, for POST /api/publish.
    #[arg(long, env = "RPCHUB_URL", default_value = DEFAULT_RPCHUB)]
    rpchub: String,
    /// A token with publish rights on conversation:* and notifications:* (default: the demo key of rpchub.toml).
    #[arg(long, env = "RPCHUB_PUBLISH_TOKEN", default_value = DEMO_PUBLISH_TOKEN, hide_default_value = true)]
    token: String,
    /// Milliseconds between two words of an answer.
    #[arg(long, env = "CHAT_BACKEND_PAUSE_MS", default_value_t = 60)]
    pause_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("chat-backend listening on http://{}, publishing to {}", listener.local_addr()?, args.rpchub);
    let config = Config {
        rpchub: args.rpchub,
        publish_token: args.token,
        pause: Duration::from_millis(args.pause_ms),
    };
    chat_backend::serve(listener, config).await
}
