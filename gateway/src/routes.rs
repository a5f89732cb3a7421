//! What the gateway answers on HTTP (contract section 1): the page, metrics, health, symbols,
//! snapshots, and the checks before a session opens (`/ws`, `/sse`), every refusal (400, 401,
//! 403, 404, 426, 503) answered before anything is upgraded. Pure decisions over a parsed
//! request head; the shard does the I/O.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proto::request::Symbols;

use crate::clock::wall_ns;
use crate::metrics::GaugeValues;
use crate::net::http::{Method, RequestHead, Response};
use crate::net::ws;
use crate::session::Entitlement;
use crate::shard::inbox::Listener;
use crate::state::{Gateway, SessionPermit};

/// The dashboard page: one self-contained file, embedded in the binary.
const PAGE: &str = include_str!("../assets/index.html");

/// The subscription an SSE stream is opened with (fixed for its life).
pub struct SseSubscription {
    pub symbols: Symbols,
    pub snapshot: bool,
    pub throttle_ms: u32,
}

/// What to do with a request.
pub enum Route {
    Respond(Response),
    /// Answer 101 and run a WebSocket session.
    WebSocket {
        accept: String,
        entitlement: Option<Arc<Entitlement>>,
        permit: SessionPermit,
    },
    /// Answer `text/event-stream` and run an SSE session.
    Sse {
        entitlement: Option<Arc<Entitlement>>,
        permit: SessionPermit,
        subscription: SseSubscription,
    },
}

/// Decides the answer to one request.
pub fn route(gw: &Arc<Gateway>, head: &RequestHead, peer: SocketAddr, listener: Listener) -> Route {
    if head.has_body {
        return Route::Respond(Response::text(
            413,
            "requests to this gateway carry no body: send a GET without one\n",
        ));
    }
    if !matches!(head.method(), Method::Get | Method::Head) {
        return Route::Respond(
            Response::text(405, "only GET is served here\n").header("Allow", "GET, HEAD"),
        );
    }
    let path = head.path.as_str();
    if listener == Listener::Metrics && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return Route::Respond(Response::text(
            404,
            "not found: this address serves /metrics, /healthz and /readyz only\n",
        ));
    }
    let respond = Route::Respond;
    match path {
        "/" => respond(
            Response::new(200, "text/html; charset=utf-8", PAGE)
                .header("Cache-Control", "no-cache"),
        ),
        "/metrics" => respond(metrics(gw)),
        "/healthz" => respond(Response::text(200, "ok\n")),
        "/readyz" => respond(readyz(gw)),
        "/symbols" => respond(symbols(gw)),
        "/snapshot" => respond(snapshot(gw, head.query.as_deref())),
        "/ws" => upgrade(gw, head, peer),
        "/sse" => sse(gw, head, peer),
        _ => respond(Response::text(
            404,
            "not found: see / for the dashboard, /ws for the WebSocket API\n",
        )),
    }
}

fn staleness_seconds(gw: &Gateway) -> f64 {
    let last = gw.store.last_update_ns();
    let since = if last == 0 { gw.started_wall_ns } else { last };
    wall_ns().saturating_sub(since) as f64 * 1e-9
}

fn readyz(gw: &Gateway) -> Response {
    let stale = staleness_seconds(gw);
    if !gw.store.is_live() {
        return Response::text(503, "not ready: the feed is not connected or still loading\n");
    }
    if gw.store.last_update_ns() != 0 && stale * 1000.0 <= gw.config.staleness_ms as f64 {
        Response::text(200, "ready\n")
    } else {
        Response::text(
            503,
            format!(
                "not ready: no quote from the feed for {stale:.1} s (staleness window {} ms)\n",
                gw.config.staleness_ms
            ),
        )
    }
}

fn metrics(gw: &Gateway) -> Response {
    let gauges = GaugeValues {
        sessions_active: gw.sessions_active.load(Ordering::Relaxed),
        subscriptions_active: gw.subscriptions_active.load(Ordering::Relaxed),
        symbols: gw.store.table().len() as u64,
        feed_staleness_seconds: staleness_seconds(gw),
        max_connections: u64::from(gw.config.max_connections),
    };
    Response::new(200, "text/plain; version=0.0.4", gw.metrics.render(&gauges))
}

fn symbols(gw: &Gateway) -> Response {
    let table = gw.store.table();
    let mut out = Vec::with_capacity(table.len() * 10 + 2);
    out.push(b'[');
    for (i, entry) in table.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        proto::json::write_str(&mut out, &entry.name);
    }
    out.push(b']');
    Response::json(200, out)
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The symbol list of a query parameter: de-duplicated, at most `max` names.
fn symbol_list(list: &str, max: usize) -> Result<Vec<String>, Response> {
    let mut seen = std::collections::HashSet::new();
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if seen.insert(name) {
            if names.len() == max {
                return Err(Response::text(
                    400,
                    format!("too many symbols: at most {max} per request\n"),
                ));
            }
            names.push(name.to_string());
        }
    }
    Ok(names)
}

fn snapshot(gw: &Gateway, query: Option<&str>) -> Response {
    let Some(list) = query_param(query, "symbols").filter(|s| !s.trim().is_empty()) else {
        return Response::text(400, "name the symbols: /snapshot?symbols=AAPL,MSFT\n");
    };
    let names = match symbol_list(&list, gw.config.max_subscriptions as usize) {
        Ok(names) => names,
        Err(answer) => return answer,
    };
    let table = gw.store.table();
    let mut out = vec![b'['];
    for (i, name) in names.iter().enumerate() {
        let Some(entry) = table.get(name) else {
            return Response::text(404, format!("unknown symbol: {name}\n"));
        };
        let Some(latest) = entry.latest() else {
            return Response::text(404, format!("no quote yet for symbol: {name}\n"));
        };
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&latest.frames.quote);
    }
    out.push(b']');
    Response::json(200, out)
}

fn refused(gw: &Gateway, peer: SocketAddr, status: u16, message: String) -> Route {
    gw.metrics.handshake_rejected(status);
    tracing::debug!(%peer, status, %message, "session refused");
    Route::Respond(Response::text(status, message))
}

/// The checks both session endpoints make: Origin, token, connection limits.
fn admit(
    gw: &Arc<Gateway>,
    head: &RequestHead,
    peer: SocketAddr,
) -> Result<(Option<Arc<Entitlement>>, SessionPermit), Route> {
    if !gw.access.origin_allowed(head.origin.as_deref()) {
        return Err(refused(gw, peer, 403, "origin not allowed\n".into()));
    }
    let token = query_param(head.query.as_deref(), "token");
    let entitlement = match gw.access.authenticate(head.authorization.as_deref(), token.as_deref())
    {
        Ok(entitlement) => entitlement,
        Err(()) => {
            gw.metrics.handshake_rejected(401);
            return Err(Route::Respond(
                Response::text(
                    401,
                    "a valid access token is required: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                )
                .header("WWW-Authenticate", "Bearer"),
            ));
        }
    };
    match SessionPermit::acquire(gw, peer.ip()) {
        Ok(permit) => Ok((entitlement, permit)),
        Err(why) => {
            gw.metrics.handshake_rejected(503);
            Err(Route::Respond(
                Response::text(503, format!("{why}: retry later\n")).header("Retry-After", "1"),
            ))
        }
    }
}

fn upgrade(gw: &Arc<Gateway>, head: &RequestHead, peer: SocketAddr) -> Route {
    if !head.upgrade_websocket || !head.connection_upgrade {
        gw.metrics.handshake_rejected(426);
        return Route::Respond(
            Response::text(426, "this endpoint speaks WebSocket: send an upgrade request\n")
                .header("Upgrade", "websocket"),
        );
    }
    if head.ws_version.as_deref() != Some("13") {
        gw.metrics.handshake_rejected(426);
        return Route::Respond(
            Response::text(426, "WebSocket version 13 required\n")
                .header("Sec-WebSocket-Version", "13"),
        );
    }
    let Some(key) = head.ws_key.as_deref() else {
        return Route::Respond(Response::text(400, "missing Sec-WebSocket-Key\n"));
    };
    let accept = ws::accept_key(key.as_bytes());
    match admit(gw, head, peer) {
        Ok((entitlement, permit)) => Route::WebSocket { accept, entitlement, permit },
        Err(route) => route,
    }
}

fn sse(gw: &Arc<Gateway>, head: &RequestHead, peer: SocketAddr) -> Route {
    let query = head.query.as_deref();
    let Some(list) = query_param(query, "symbols").filter(|s| !s.trim().is_empty()) else {
        return Route::Respond(Response::text(400, "name the symbols: /sse?symbols=AAPL,MSFT\n"));
    };
    let names = match symbol_list(&list, gw.config.max_subscriptions as usize) {
        Ok(names) => names,
        Err(answer) => return Route::Respond(answer),
    };
    let throttle_ms = match query_param(query, "throttle_ms").map(|v| v.parse::<u32>()) {
        None => 0,
        Some(Ok(ms)) if ms <= proto::MAX_THROTTLE_MS => ms,
        Some(_) => {
            return Route::Respond(Response::text(
                400,
                "throttle_ms must be an integer from 0 to 60000\n",
            ))
        }
    };
    let snapshot = match query_param(query, "snapshot").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Route::Respond(Response::text(400, "snapshot must be true or false\n")),
    };
    let (entitlement, permit) = match admit(gw, head, peer) {
        Ok(admitted) => admitted,
        Err(route) => return route,
    };
    let symbols = if names.len() == 1 && names[0] == "*" {
        Symbols::All
    } else {
        let table = gw.store.table();
        let valid = names.iter().any(|n| {
            table
                .get(n)
                .is_some_and(|e| entitlement.as_ref().is_none_or(|a| a.contains(e.name.as_ref())))
        });
        if !valid {
            return Route::Respond(Response::text(
                400,
                "none of the named symbols can be streamed: see /symbols\n",
            ));
        }
        Symbols::List(names)
    };
    Route::Sse {
        entitlement,
        permit,
        subscription: SseSubscription { symbols, snapshot, throttle_ms },
    }
}
