//! A session's requests: budgets first (the rate limit is checked before anything is decoded),
//! then the bounded decoder, then the change to the session's subscriptions and the answers it
//! owes, in the contract's order (`ack`, then `unknown_symbol`, then `forbidden`, then what
//! the request causes). A request rejected as a whole changes nothing.
//!
//! Every step costs time linear in the request's size: names are looked up once each, new
//! subscriptions are merged into the session's sorted list in one sort, removals in one pass.

use std::collections::{HashMap, HashSet};

use proto::close;
use proto::request::{DecodeErrorKind, DecodeLimits, Op, Request, RequestId, Resume, Symbols};
use proto::server::{self, ErrorCode};

use super::Core;
use crate::delivery as policy;
use crate::fanout::Waiting;
use crate::metrics::{EndReason, MsgType, OpLabel};
use crate::session::{AllSymbols, Ending, Out, Session};
use crate::store::{SymbolId, SymbolTable};

/// Answers one complete text message of session `key`.
pub fn handle_text(core: &mut Core, key: u32, s: &mut Session, text: &[u8], now_ns: u64) {
    let config = &core.gw.config;
    if let Err(retry_after_ms) = s.budgets.rate.take(now_ns) {
        if s.budgets.rate_strikes.strike(now_ns) {
            s.close(Ending::Close(close::POLICY_RATE, EndReason::Policy), now_ns);
            return;
        }
        let message = format!(
            "more than {} requests per second: retry after {retry_after_ms} ms",
            config.max_requests_per_sec
        );
        // Not decoded: only its id is read, to echo it.
        let id = proto::request::peek_id(text);
        error(core, s, id.as_ref(), ErrorCode::RateLimited, &message, &[], Some(retry_after_ms));
        return;
    }
    let limits = DecodeLimits { max_symbols: s.max_subscriptions };
    let decoded = Request::decode(text, &mut core.decode_scratch, limits);
    core.gw.metrics.request(decoded.as_ref().map_or(OpLabel::Invalid, |r| OpLabel::of(&r.op)));
    match decoded {
        Err(e) if e.kind == DecodeErrorKind::TooManySymbols => {
            // Well formed, just too big to serve: refused whole, not a strike.
            error(core, s, e.id.as_ref(), e.kind.code(), &e.message, &[], None)
        }
        Err(e) => bad_request(core, s, e.id.as_ref(), &e.message, now_ns),
        Ok(request) => match request.op {
            Op::Subscribe { symbols, snapshot, throttle_ms, resume } => {
                let subscription = Subscribe { symbols, snapshot, throttle_ms, resume };
                subscribe(core, key, s, request.id.as_ref(), subscription, now_ns)
            }
            Op::Unsubscribe { symbols } => unsubscribe(core, s, request.id.as_ref(), symbols),
            Op::Ping => {
                let pong = server::pong(request.id.as_ref(), crate::clock::wall_ns());
                s.push_text(MsgType::Pong, pong);
            }
        },
    }
    core.queue(key, s);
}

/// A `bad_request`, counted against the error budget; the one that spends it is answered, then
/// the session closes (1008).
fn bad_request(core: &mut Core, s: &mut Session, id: Option<&RequestId>, why: &str, now_ns: u64) {
    error(core, s, id, ErrorCode::BadRequest, why, &[], None);
    if s.budgets.bad_strikes.strike(now_ns) {
        s.close(Ending::Close(close::POLICY_ERRORS, EndReason::Policy), now_ns);
    }
}

pub fn error(
    core: &Core,
    s: &mut Session,
    id: Option<&RequestId>,
    code: ErrorCode,
    message: &str,
    symbols: &[&str],
    retry_after_ms: Option<u64>,
) {
    core.gw.metrics.request_error(code);
    let frame = server::error(id, code, message, symbols.iter().copied(), retry_after_ms);
    s.push_text(MsgType::Error, frame);
}

/// Names an error's message shows at most (its `symbols` lists them all).
const SHOWN_NAMES: usize = 10;
/// Characters of one name a message shows at most.
const SHOWN_CHARS: usize = 32;

/// `names` for an error's message: the first [`SHOWN_NAMES`], each cut at [`SHOWN_CHARS`], and
/// how many more. The message stays under a kilobyte whatever the request named, so an error
/// is at most the size of its request plus that (docs/backpressure.md).
fn shown(names: &[&str]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().take(SHOWN_NAMES).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let mut chars = name.chars();
        out.extend(chars.by_ref().take(SHOWN_CHARS));
        if chars.next().is_some() {
            out.push('…');
        }
    }
    if names.len() > SHOWN_NAMES {
        out.push_str(&format!(" and {} more", names.len() - SHOWN_NAMES));
    }
    out
}

/// The names of a request, resolved against the table and the session's entitlement.
struct Resolved<'a> {
    known: Vec<SymbolId>,
    unknown: Vec<&'a str>,
    forbidden: Vec<&'a str>,
}

fn resolve<'a>(table: &SymbolTable, s: &Session, names: &'a [String]) -> Resolved<'a> {
    let mut out = Resolved { known: Vec::new(), unknown: Vec::new(), forbidden: Vec::new() };
    for name in names {
        match table.get(name) {
            None => out.unknown.push(name),
            Some(entry) if !entitled(s, &entry.name) => out.forbidden.push(name),
            Some(entry) => out.known.push(entry.id),
        }
    }
    out
}

pub fn entitled(s: &Session, name: &str) -> bool {
    s.grant.allows(name)
}

/// A subscribe, as decoded from a frame or from an SSE query.
pub struct Subscribe {
    pub symbols: Symbols,
    pub snapshot: bool,
    pub throttle_ms: u32,
    pub resume: Option<Resume>,
}

pub fn subscribe(
    core: &mut Core,
    key: u32,
    s: &mut Session,
    id: Option<&RequestId>,
    request: Subscribe,
    now_ns: u64,
) {
    let Subscribe { symbols, snapshot, throttle_ms, resume } = request;
    let table = core.gw.store.table_full();
    let names = match &symbols {
        Symbols::All => Vec::new(),
        Symbols::List(names) => names.clone(),
    };
    let resolved = match &symbols {
        Symbols::All => Resolved {
            known: table.entries.iter().filter(|e| entitled(s, &e.name)).map(|e| e.id).collect(),
            unknown: Vec::new(),
            forbidden: Vec::new(),
        },
        Symbols::List(_) => resolve(&table, s, &names),
    };
    let added = resolved.known.iter().filter(|&&sym| s.sub_of(sym).is_none()).count();
    let max = s.max_subscriptions;
    if s.subs.len() + added > max {
        let message = format!(
            "subscribing to {added} more symbols would exceed max_subscriptions ({max}); this session has {}",
            s.subs.len()
        );
        error(core, s, id, ErrorCode::TooManySubscriptions, &message, &[], None);
        return;
    }
    // Which symbols resume: decided before the ack, which lists them.
    let resumed: Option<HashMap<SymbolId, u64>> = resume.as_ref().map(|resume| {
        let epoch_ok = resume.epoch == *core.gw.store.epoch();
        let asked: HashMap<&str, u64> = resume.seq.iter().map(|(n, q)| (n.as_str(), *q)).collect();
        resolved
            .known
            .iter()
            .filter(|&&sym| epoch_ok && s.sub_of(sym).is_none())
            .filter_map(|&sym| {
                let entry = &table.entries[sym as usize];
                let seq = *asked.get(entry.name.as_ref())?;
                entry.holds_every_update_after(seq).then_some((sym, seq))
            })
            .collect()
    });
    if let (Some(resume), Some(resumed)) = (&resume, &resumed) {
        // Only names this subscribe accepts get either outcome: a name in `seq` that is not
        // requested (or unknown, or forbidden) gets neither a replay nor a snapshot.
        let accepted: HashSet<SymbolId> = resolved.known.iter().copied().collect();
        let asked = resume
            .seq
            .iter()
            .filter(|(n, _)| table.get(n).is_some_and(|e| accepted.contains(&e.id)))
            .count();
        core.gw.metrics.resumed(resumed.len() as u64, asked.saturating_sub(resumed.len()) as u64);
    }
    let resumed_names = |resumed: &HashMap<SymbolId, u64>| -> Vec<&str> {
        resolved
            .known
            .iter()
            .filter(|sym| resumed.contains_key(sym))
            .map(|&sym| table.entries[sym as usize].name.as_ref())
            .collect()
    };
    let all = matches!(symbols, Symbols::All);
    if all || !resolved.known.is_empty() {
        let names: Vec<&str> = if all {
            vec!["*"]
        } else {
            resolved.known.iter().map(|&sym| table.entries[sym as usize].name.as_ref()).collect()
        };
        let ack = match &resumed {
            Some(resumed) => server::ack_resumed(id, "subscribe", names, resumed_names(resumed)),
            None => server::ack(id, "subscribe", names),
        };
        s.push_text(MsgType::Ack, ack);
    }
    if all {
        s.all = Some(AllSymbols { snapshot, throttle_ms });
    }
    if !resolved.unknown.is_empty() {
        let message = format!("unknown symbol: {}", shown(&resolved.unknown));
        error(core, s, id, ErrorCode::UnknownSymbol, &message, &resolved.unknown, None);
        // Floods of unknown names spend the same budget as bad requests.
        if s.budgets.bad_strikes.strike(now_ns) {
            s.close(Ending::Close(close::POLICY_ERRORS, EndReason::Policy), now_ns);
        }
    }
    if !resolved.forbidden.is_empty() {
        let message = format!("not entitled to symbol: {}", shown(&resolved.forbidden));
        error(core, s, id, ErrorCode::Forbidden, &message, &resolved.forbidden, None);
    }
    let mut fresh = Vec::with_capacity(added);
    for sym in resolved.known {
        match resumed.as_ref().and_then(|r| r.get(&sym)) {
            Some(&seq) => resume_one(core, key, s, sym, seq, throttle_ms, now_ns, &mut fresh),
            None => add_or_update(core, key, s, sym, snapshot, throttle_ms, now_ns, &mut fresh),
        }
    }
    if let Some(poison) = &core.gw.config.panic_on_symbol {
        // A fault injected by tests (never settable from the command line), where a panic
        // hurts most: the new subscriptions are in the registry, not yet on the session's list.
        assert!(!names.iter().any(|n| n == poison), "injected fault: subscribe to {poison}");
    }
    merge_new(s, fresh);
}

/// Subscribes to `symbol` from `seq` on: every update after it is replayed, no snapshot.
#[allow(clippy::too_many_arguments)]
fn resume_one(
    core: &mut Core,
    key: u32,
    s: &mut Session,
    symbol: SymbolId,
    seq: u64,
    throttle_ms: u32,
    now_ns: u64,
    fresh: &mut Vec<(SymbolId, u32)>,
) {
    core.refresh_latest(symbol);
    let state = policy::Subscription {
        last_seq: seq,
        snapshot_due: false,
        resuming: true,
        throttle_ns: u64::from(throttle_ms) * 1_000_000,
        next_send_ns: now_ns,
    };
    let sub = core.insert_sub(key, symbol, state);
    core.make_ready(s, sub);
    fresh.push((symbol, sub));
}

/// Subscribes session `key` to `symbol` (or replaces the options of its subscription), making
/// it ready when a snapshot is due. New subscriptions are collected in `fresh`, to be merged
/// into the session's sorted list once.
#[allow(clippy::too_many_arguments)]
pub fn add_or_update(
    core: &mut Core,
    key: u32,
    s: &mut Session,
    symbol: SymbolId,
    snapshot: bool,
    throttle_ms: u32,
    now_ns: u64,
    fresh: &mut Vec<(SymbolId, u32)>,
) {
    let throttle_ns = u64::from(throttle_ms) * 1_000_000;
    match s.sub_of(symbol) {
        Some(sub) => {
            let record = core.registry.get_mut(sub);
            let deferred = record.waiting == Waiting::Deferred;
            let state = &mut record.state;
            state.throttle_ns = throttle_ns;
            // A shorter throttle applies at once, not after the old interval.
            let sooner = now_ns.saturating_add(throttle_ns) < state.next_send_ns;
            state.next_send_ns = state.next_send_ns.min(now_ns + throttle_ns);
            state.resuming = false;
            if snapshot {
                state.snapshot_due = true;
            }
            // A deferred subscription waits for the session's deferred timer, which was set for
            // the old interval (and fan-out passes over it): back to ready, and the write pass
            // defers it again, to the new time, if it must still wait.
            if snapshot || (sooner && deferred) {
                core.make_ready(s, sub);
            }
        }
        None => {
            let latest = core.refresh_latest(symbol);
            let state = policy::Subscription {
                // No snapshot asked for: quotes start with the next update.
                last_seq: if snapshot { 0 } else { latest },
                snapshot_due: snapshot,
                resuming: false,
                throttle_ns,
                next_send_ns: now_ns,
            };
            let sub = core.insert_sub(key, symbol, state);
            if snapshot {
                core.make_ready(s, sub);
            }
            fresh.push((symbol, sub));
        }
    }
}

/// Merges new (symbol, subscription) pairs into the session's sorted list.
pub fn merge_new(s: &mut Session, mut fresh: Vec<(SymbolId, u32)>) {
    if fresh.is_empty() {
        return;
    }
    s.subs.append(&mut fresh);
    s.subs.sort_unstable_by_key(|&(sym, _)| sym);
}

fn unsubscribe(core: &mut Core, s: &mut Session, id: Option<&RequestId>, symbols: Symbols) {
    match symbols {
        Symbols::All => {
            core.remove_all_subs(s);
            s.all = None;
            s.push_text(MsgType::Ack, server::ack(id, "unsubscribe", ["*"]));
        }
        Symbols::List(names) => {
            let table = core.gw.store.table_full();
            let resolved = resolve(&table, s, &names);
            let gone: HashSet<SymbolId> = resolved.known.iter().copied().collect();
            core.remove_subs_where(s, |sym| gone.contains(&sym));
            // Unsubscribing what is not subscribed (or does not exist) is not an error.
            let known = resolved.known.iter().map(|&sym| table.entries[sym as usize].name.as_ref());
            let ack = server::ack(
                id,
                "unsubscribe",
                known
                    .chain(resolved.unknown.iter().copied())
                    .chain(resolved.forbidden.iter().copied()),
            );
            s.push_text(MsgType::Ack, ack);
        }
    }
    // Removed subscriptions were taken off the ready and deferred lists above: nothing for
    // these symbols follows this ack.
    debug_assert!(s.outbox.back().is_some_and(|o| matches!(o, Out::Text(MsgType::Ack, _))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_message_shows_ten_names_of_at_most_32_characters() {
        assert_eq!(shown(&["FOO"]), "FOO");
        assert_eq!(shown(&["A", "B"]), "A, B");
        let long = "é".repeat(40);
        assert_eq!(shown(&[&long]), format!("{}…", "é".repeat(32)));
        let many: Vec<String> = (0..1_000).map(|i| format!("{}{i}", "N".repeat(60))).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        let message = shown(&names);
        assert!(message.ends_with(" and 990 more"), "{message}");
        assert!(message.len() < 1_024, "{} bytes", message.len());
    }
}
