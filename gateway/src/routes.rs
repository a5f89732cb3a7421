//! What the gateway answers on HTTP (contract section 1): the page, metrics, health, symbols,
//! snapshots, and the checks before a session opens (`/ws`, `/sse`), every refusal (400, 401,
//! 403, 404, 426, 503) answered before anything is upgraded. Pure decisions over a parsed
//! request head; the shard does the I/O.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use proto::request::{Resume, Symbols};

use crate::access::{page_headers, AuthFailure, Grant, SessionSlot};
use crate::clock::{mono_ns, wall_ns};
use crate::inbox::Listener;
use crate::metrics::GaugeValues;
use crate::net::http::{Method, RequestHead, Response};
use crate::net::query::{self, Query, MAX_QUERY_PAIRS};
use crate::net::ws;
use crate::state::{Gateway, SessionPermit};

/// The dashboard page: one self-contained file, embedded in the binary.
const PAGE: &str = include_str!("../assets/index.html");

/// The subscription an SSE stream is opened with (fixed for its life).
pub struct SseSubscription {
    pub symbols: Symbols,
    pub snapshot: bool,
    pub throttle_ms: u32,
    pub resume: Option<Resume>,
}

/// Who may open a session, and the places it holds against the limits until it ends.
pub struct Admission {
    pub grant: Arc<Grant>,
    pub permit: SessionPermit,
    pub slot: SessionSlot,
}

/// What to do with a request.
pub enum Route {
    Respond(Response),
    /// Answer 101 and run a WebSocket session.
    WebSocket {
        accept: String,
        admission: Admission,
    },
    /// Answer `text/event-stream` and run an SSE session.
    Sse {
        admission: Admission,
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
    let query = match Query::parse(head.query.as_deref().unwrap_or(""), MAX_QUERY_PAIRS) {
        Ok(query) => query,
        Err(e) => return Route::Respond(Response::text(400, format!("{e}\n"))),
    };
    let respond = Route::Respond;
    match path {
        "/" => {
            let mut page = Response::new(200, "text/html; charset=utf-8", PAGE)
                .header("Cache-Control", "no-cache");
            for (name, value) in page_headers::PAGE_HEADERS {
                page = page.header(name, value);
            }
            respond(page)
        }
        "/metrics" => respond(metrics(gw)),
        "/healthz" => respond(Response::text(200, "ok\n")),
        "/readyz" => respond(readyz(gw)),
        "/symbols" => respond(match authenticate(gw, head, &query, peer) {
            Ok(grant) => symbols(gw, &grant),
            Err(refusal) => refusal,
        }),
        "/snapshot" => respond(match authenticate(gw, head, &query, peer) {
            Ok(grant) => snapshot(gw, &grant, &query),
            Err(refusal) => refusal,
        }),
        "/ws" => upgrade(gw, head, &query, peer),
        "/sse" => sse(gw, head, &query, peer),
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
        sse_sessions_active: gw.sse_sessions_active.load(Ordering::Relaxed),
        history_bytes: gw.store.history_bytes(),
        history_window_seconds: gw.store.history_window_ns() as f64 * 1e-9,
    };
    Response::new(200, "text/plain; version=0.0.4", gw.metrics.render(&gauges))
}

/// Every symbol the grant allows, most active first (`SnapshotStore::most_active_first`), so
/// that a page's first ten are the ten busiest.
fn symbols(gw: &Gateway, grant: &Grant) -> Response {
    let table = gw.store.table();
    let order = gw.store.most_active_first(&table, mono_ns());
    let mut out = Vec::with_capacity(table.len() * 10 + 2);
    out.push(b'[');
    let entries = order.iter().filter_map(|&id| table.entries.get(id as usize));
    for entry in entries.filter(|e| grant.allows(&e.name)) {
        if out.len() > 1 {
            out.push(b',');
        }
        proto::json::write_str(&mut out, &entry.name);
    }
    out.push(b']');
    Response::json(200, out)
}

fn snapshot(gw: &Gateway, grant: &Grant, query: &Query<'_>) -> Response {
    let Some(list) = query.get("symbols").filter(|s| !s.trim().is_empty()) else {
        return Response::text(400, "name the symbols: /snapshot?symbols=AAPL,MSFT\n");
    };
    let names = match query::symbol_list(list, gw.config.max_subscriptions as usize) {
        Ok(names) => names,
        Err(e) => return Response::text(400, format!("{e}\n")),
    };
    if let Some(name) = names.iter().find(|n| !grant.allows(n)) {
        return Response::text(403, format!("not entitled to symbol: {name}\n"));
    }
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

fn refused(gw: &Gateway, peer: SocketAddr, status: u16, message: String) -> Response {
    gw.metrics.handshake_rejected(status);
    tracing::debug!(%peer, status, %message, "session refused");
    Response::text(status, message)
}

/// The request's grant, from its `Authorization` header or `token` parameter; refusals are
/// 401 with the reason (never the credential), counted, and logged at a bounded rate.
fn authenticate(
    gw: &Gateway,
    head: &RequestHead,
    query: &Query<'_>,
    peer: SocketAddr,
) -> Result<Arc<Grant>, Response> {
    let access = gw.access.load();
    let authorization = head.authorization.as_deref().map(str::as_bytes);
    access.authenticate_request(authorization, query.get("token"), SystemTime::now()).map_err(
        |failure: AuthFailure| {
            gw.metrics.auth_failed(failure);
            gw.audit_auth_failure(peer, &head.path, failure);
            Response::text(
                401,
                format!(
                    "a valid access token is required ({}): Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                    failure.as_str()
                ),
            )
            .header("WWW-Authenticate", "Bearer")
        },
    )
}

/// The checks both session endpoints make: Origin, credential, connection limits.
fn admit(
    gw: &Arc<Gateway>,
    head: &RequestHead,
    query: &Query<'_>,
    peer: SocketAddr,
) -> Result<Admission, Response> {
    if !gw.origin_allowed(head.origin.as_deref()) {
        return Err(refused(gw, peer, 403, "origin not allowed\n".into()));
    }
    let grant =
        authenticate(gw, head, query, peer).inspect_err(|_| gw.metrics.handshake_rejected(401))?;
    let busy = |why: String| {
        gw.metrics.handshake_rejected(503);
        Response::text(503, format!("{why}: retry later\n")).header("Retry-After", "1")
    };
    let slot = gw.sessions_per_grant.try_acquire(&grant).map_err(|limit| {
        busy(format!("{} has its {} sessions open", limit.principal, limit.limit))
    })?;
    let permit = SessionPermit::acquire(gw, peer.ip()).map_err(|why| busy(why.to_string()))?;
    Ok(Admission { grant, permit, slot })
}

fn upgrade(gw: &Arc<Gateway>, head: &RequestHead, query: &Query<'_>, peer: SocketAddr) -> Route {
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
    match admit(gw, head, query, peer) {
        Ok(admission) => Route::WebSocket { accept, admission },
        Err(refusal) => Route::Respond(refusal),
    }
}

fn sse(gw: &Arc<Gateway>, head: &RequestHead, query: &Query<'_>, peer: SocketAddr) -> Route {
    let bad = |message: String| Route::Respond(Response::text(400, message));
    let Some(list) = query.get("symbols").filter(|s| !s.trim().is_empty()) else {
        return bad("name the symbols: /sse?symbols=AAPL,MSFT\n".into());
    };
    let max = gw.config.max_subscriptions as usize;
    let names = match query::symbol_list(list, max) {
        Ok(names) => names,
        Err(e) => return bad(format!("{e}\n")),
    };
    let throttle_ms = match query.get("throttle_ms").map(str::parse::<u32>) {
        None => 0,
        Some(Ok(ms)) if ms <= proto::MAX_THROTTLE_MS => ms,
        Some(_) => return bad("throttle_ms must be an integer from 0 to 60000\n".into()),
    };
    let snapshot = match query.get("snapshot") {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return bad("snapshot must be true or false\n".into()),
    };
    let resume = match (query.get("resume_epoch"), query.get("since")) {
        (None, None) => None,
        (Some(epoch), since) => match query::since_list(since.unwrap_or(""), max) {
            Ok(seq) => Some(Resume {
                epoch: epoch.to_string(),
                seq: seq.into_iter().map(|(s, n)| (s.to_string(), n)).collect(),
            }),
            Err(e) => return bad(format!("{e}\n")),
        },
        (None, Some(_)) => {
            return bad("since needs resume_epoch: the epoch of the stream it continues\n".into())
        }
    };
    let admission = match admit(gw, head, query, peer) {
        Ok(admission) => admission,
        Err(refusal) => return Route::Respond(refusal),
    };
    let symbols = if names == ["*"] {
        Symbols::All
    } else {
        let table = gw.store.table();
        let known: Vec<&&str> = names.iter().filter(|n| table.get(n).is_some()).collect();
        if known.is_empty() {
            return bad("none of the named symbols exists: see /symbols\n".into());
        }
        if !known.iter().any(|n| admission.grant.allows(n)) {
            gw.metrics.handshake_rejected(403);
            return Route::Respond(Response::text(
                403,
                "not entitled to any of the named symbols\n",
            ));
        }
        Symbols::List(names.iter().map(|n| n.to_string()).collect())
    };
    Route::Sse {
        admission,
        subscription: SseSubscription { symbols, snapshot, throttle_ms, resume },
    }
}
