//! Churning sessions (`--churn N`): N clients beside the measured ones, each of which opens a
//! session, subscribes to `["*"]`, reads everything for `--churn-hold-ms`, closes with 1000,
//! waits for the server's close, and opens the next at once, from the start of the ramp to
//! the end of the run. They exercise what a session leaves behind when it ends (subscriber
//! lists, ids, per-address counts, buffers), which is what the soak scenario (issue 14)
//! watches; their messages are counted, never timed, and never enter the latency figures.
//!
//! They run in worker 0 only, on its thread, with the same connect and frame code as the
//! measured clients.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::WorkerShared;
use crate::connect::{self, Dial, ReadBuf};
use crate::frame;

/// How long a churning client waits for the server's close frame after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Read buffer of a churning client: a `["*"]` session gets every update.
const READ_BUFFER: usize = 64 * 1024;
/// Pause after a failed connection attempt, so a refusing gateway is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What the churning clients counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnStats {
    /// Sessions opened (upgrade answered 101).
    pub sessions: u64,
    /// Sessions that ended with the close handshake we started (1000 echoed).
    pub clean_closes: u64,
    /// Connection attempts that failed, by reason.
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Sessions the server ended first, by close code (`1006`: the connection dropped).
    pub server_closes_by_code: BTreeMap<String, u64>,
    /// Text messages received.
    pub messages: u64,
}

impl ChurnStats {
    pub fn merge(&mut self, o: &ChurnStats) {
        self.sessions += o.sessions;
        self.clean_closes += o.clean_closes;
        self.messages += o.messages;
        for (into, from) in [
            (&mut self.failures_by_reason, &o.failures_by_reason),
            (&mut self.server_closes_by_code, &o.server_closes_by_code),
        ] {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// Runs churning client `n` until the run stops.
pub async fn run(sh: &WorkerShared, n: u64) {
    let hold = Duration::from_millis(sh.plan.churn_hold_ms);
    // Spread the clients' reconnections evenly over one hold period.
    let offset = hold.mul_f64(n as f64 / sh.plan.churn.max(1) as f64);
    tokio::select! {
        _ = sh.stop.cancelled() => return,
        _ = tokio::time::sleep(offset) => {}
    }
    let src = &sh.plan.source_addrs;
    // Churning clients spread over the gateways as the others do.
    let target = &sh.targets[(n % sh.targets.len() as u64) as usize];
    let dial = Dial {
        upgrade: connect::Upgrade::WebSocket,
        addr: target.addr,
        source: (!src.is_empty()).then(|| src[(n % src.len() as u64) as usize]),
        host_header: &target.host_header,
        path: &target.path,
        token: sh.plan.token.as_deref(),
        rcvbuf: sh.plan.rcvbuf,
        timeout: Duration::from_millis(sh.plan.connect_timeout_ms),
    };
    let mut buf = ReadBuf::new(READ_BUFFER);
    let mut out = Vec::with_capacity(128);
    let mut mask_state = (n as u32).wrapping_mul(2_246_822_519) | 1;
    let mut mask = move || {
        mask_state ^= mask_state << 13;
        mask_state ^= mask_state >> 17;
        mask_state ^= mask_state << 5;
        mask_state.to_be_bytes()
    };
    while !sh.stop.is_cancelled() {
        let opened = tokio::select! {
            _ = sh.stop.cancelled() => return,
            r = connect::open(&dial, &mut buf) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(reason) => {
                *sh.churn.borrow_mut().failures_by_reason.entry(reason).or_default() += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        sh.churn.borrow_mut().sessions += 1;
        out.clear();
        frame::write_frame(
            &mut out,
            frame::OP_TEXT,
            br#"{"op":"subscribe","id":1,"symbols":["*"],"snapshot":true}"#,
            mask(),
        );
        let deadline = tokio::time::Instant::now() + hold;
        let ended = match stream.write_all(&out).await {
            Ok(()) => {
                tokio::select! {
                    r = read_until_close(sh, &mut stream, &mut buf, &mut out, &mut mask) => Some(r),
                    _ = tokio::time::sleep_until(deadline) => None,
                    _ = sh.stop.cancelled() => None,
                }
            }
            Err(_) => Some("io_error".to_string()),
        };
        match ended {
            Some(code) => {
                *sh.churn.borrow_mut().server_closes_by_code.entry(code).or_default() += 1;
            }
            None => {
                out.clear();
                frame::write_frame(&mut out, frame::OP_CLOSE, &1000u16.to_be_bytes(), mask());
                let closed = async {
                    stream.write_all(&out).await.ok()?;
                    out.clear();
                    Some(read_until_close(sh, &mut stream, &mut buf, &mut out, &mut mask).await)
                };
                if let Ok(Some(code)) = tokio::time::timeout(CLOSE_WAIT, closed).await {
                    if code == "1000" {
                        sh.churn.borrow_mut().clean_closes += 1;
                    }
                }
            }
        }
    }
}

/// Reads and counts messages, answering pings, until the server's close frame or the end of
/// the connection; returns the close code as a label.
async fn read_until_close(
    sh: &WorkerShared,
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    out: &mut Vec<u8>,
    mask: &mut impl FnMut() -> [u8; 4],
) -> String {
    loop {
        let mut messages = 0;
        loop {
            let h = match frame::parse_header(buf.filled()) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return "protocol_error".into(),
            };
            if buf.filled().len() < h.total_len() {
                buf.make_room(h.total_len());
                break;
            }
            let payload = &buf.data[buf.start + h.header_len..buf.start + h.total_len()];
            match h.opcode {
                frame::OP_TEXT => messages += 1,
                frame::OP_CLOSE => return frame::close_code(payload).to_string(),
                frame::OP_PING => {
                    out.clear();
                    frame::write_frame(out, frame::OP_PONG, payload, mask());
                    if stream.write_all(out).await.is_err() {
                        return "io_error".into();
                    }
                }
                _ => {}
            }
            buf.start += h.total_len();
        }
        sh.churn.borrow_mut().messages += messages;
        buf.make_room(0);
        if buf.end == buf.data.len() {
            buf.make_room(buf.data.len() + 1);
        }
        match stream.read(&mut buf.data[buf.end..]).await {
            Ok(0) => return "1006".into(),
            Ok(n) => buf.end += n,
            Err(_) => return "io_error".into(),
        }
    }
}
