//! A synthetic quote server for measuring the load tester itself: it answers a subscribe like the
//! gateway (welcome, ack, snapshots), then writes each session `--per-session-rate` quotes per
//! second of its symbols, in batches every `--tick-ms`, with nothing else to do. Whatever limits
//! a run against it is the tester (or the kernel), not a gateway.
//!
//! ```sh
//! taskset -c 0 target/release/examples/blast_server --per-session-rate 400 &
//! taskset -c 1 target/release/load-tests --url ws://127.0.0.1:9100/ws --symbols S0,S1,…
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone, Copy)]
struct Args {
    /// Port on 127.0.0.1 to listen on.
    #[arg(long, default_value_t = 9100)]
    port: u16,
    /// Quotes per second written to each session.
    #[arg(long, default_value_t = 400)]
    per_session_rate: u64,
    /// Milliseconds between two batches of a session.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn quote(out: &mut Vec<u8>, kind: &str, symbol: &str, seq: u64) {
    let body = format!(
        r#"{{"type":"{kind}","symbol":"{symbol}","seq":{seq},"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":{}}}"#,
        now_ns()
    );
    out.push(0x81);
    if body.len() < 126 {
        out.push(body.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(body.as_bytes());
}

async fn session(tcp: TcpStream, args: Args) -> Option<()> {
    tcp.set_nodelay(true).ok()?;
    let mut ws = tokio_tungstenite::accept_async(tcp).await.ok()?;
    let welcome = format!(
        r#"{{"type":"welcome","protocol":1,"server":"blast","session":"b","ts":{},"heartbeat_ms":5000,"limits":{{"max_subscriptions":1000,"max_message_bytes":65536,"max_requests_per_sec":50}}}}"#,
        now_ns()
    );
    ws.send(Message::text(welcome)).await.ok()?;
    let req = ws.next().await?.ok()?;
    let req: serde_json::Value = serde_json::from_str(req.to_text().ok()?).ok()?;
    let symbols: Vec<String> =
        req["symbols"].as_array()?.iter().filter_map(|s| s.as_str().map(String::from)).collect();
    if symbols.is_empty() {
        return None;
    }
    let ack = serde_json::json!({"type":"ack","id":req["id"],"op":"subscribe","symbols":symbols});
    ws.send(Message::text(ack.to_string())).await.ok()?;
    let mut tcp = ws.into_inner();
    let mut seqs = vec![0u64; symbols.len()];
    let mut out = Vec::with_capacity(64 * 1024);
    for s in &symbols {
        quote(&mut out, "snapshot", s, 0);
    }
    tcp.write_all(&out).await.ok()?;
    let per_tick = (args.per_session_rate * args.tick_ms / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms));
    let mut next = 0usize;
    loop {
        tick.tick().await;
        out.clear();
        for _ in 0..per_tick {
            let i = next % symbols.len();
            next += 1;
            seqs[i] += 1;
            quote(&mut out, "quote", &symbols[i], seqs[i]);
        }
        tcp.write_all(&out).await.ok()?;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("blast_server: listening on ws://127.0.0.1:{}/ws", args.port);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(session(tcp, args));
    }
}
