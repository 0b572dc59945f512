//! Follows a channel and never misses a publication silently: prints each event as one JSON
//! line, and on any disconnect reconnects with exponential backoff and full jitter (1 s doubling
//! to a 30 s cap) and resumes with `since` from the last offset it printed, warning on stderr
//! when the server could not recover the stretch in between (`recovered: false`).
//!
//! `cargo run --example follow -- ws://127.0.0.1:7410/ws/rpc trades:SOL [TOKEN]`

use rpchub::client::{self, Event, StreamPosition};
use std::time::Duration;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(channel)) = (args.next(), args.next()) else {
        eprintln!("usage: follow WS_URL CHANNEL [TOKEN]");
        std::process::exit(2);
    };
    let token = args.next();
    // Where the output is: the epoch of the stream and the last offset printed.
    let mut last: Option<StreamPosition> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match follow(&url, &channel, token.as_deref(), &mut last).await {
            // It ran: start the backoff over.
            Ok(()) => backoff = FIRST_BACKOFF,
            Err(e) => eprintln!("follow: {e}"),
        }
        // Full jitter: a random wait up to the backoff, so a crowd of clients does not come
        // back at once after a restart.
        let wait = backoff.mul_f64(rand::random::<f64>());
        eprintln!("follow: reconnecting in {} ms", wait.as_millis());
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: subscribes from `last` and prints until the connection ends (`Ok`) or fails
/// to start (`Err`).
async fn follow(
    url: &str,
    channel: &str,
    token: Option<&str>,
    last: &mut Option<StreamPosition>,
) -> Result<(), client::Error> {
    let c = client::connect(url, token).await?;
    let mut sub = client::subscribe(&c, channel, last.clone(), None).await?;
    while let Some(event) = sub.next().await {
        let event = event?;
        match &event {
            Event::Snapshot { epoch, offset, recovered, publications, .. } => {
                if last.is_some() && !recovered {
                    eprintln!(
                        "follow: warning: the server could not recover everything after {:?}; \
                         continuing from the retained history of epoch {epoch}",
                        last.as_ref().map(|p| (&p.epoch, p.offset))
                    );
                }
                // The snapshot reaches `offset`: its publications are printed with it.
                let _ = publications;
                *last = Some(StreamPosition { epoch: epoch.clone(), offset: *offset });
            }
            Event::Publication { offset, .. } => {
                if let Some(p) = last.as_mut() {
                    p.offset = *offset;
                }
            }
            Event::Closed { reason, .. } => {
                eprintln!("follow: the server ended the subscription ({reason}); subscribing again");
                return Ok(());
            }
            Event::Gap { from, to, reason, .. } => {
                // Announced, never silent: the stream goes on after it.
                eprintln!("follow: offsets {from}..={to} are lost ({reason}); going on after them");
                if let Some(p) = last.as_mut() {
                    p.offset = *to;
                }
            }
            Event::Heartbeat { .. } | Event::Join { .. } | Event::Leave { .. } | Event::Other => {}
        }
        println!("{}", serde_json::to_string(&event).expect("an event serializes; qed"));
    }
    Ok(())
}
