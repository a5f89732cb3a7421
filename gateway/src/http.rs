//! HTTP on the session port (section 1): the page, metrics, health, symbols, snapshots, and the
//! WebSocket upgrade, with every refusal (426, 403, 401, 503) answered before the upgrade.
//! Requests are parsed by hyper; routing is axum's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::clock::wall_ns;
use crate::metrics::GaugeValues;
use crate::server::{Gateway, SessionPermit};
use crate::session::io::{Progress, ProgressIo};
use crate::session::{self, SessionParams};

/// The dashboard page: one self-contained file, embedded in the binary.
const PAGE: &str = include_str!("../assets/index.html");

/// What one shard's connections share.
pub struct ShardCtx {
    pub gateway: Arc<Gateway>,
    pub shard: usize,
    /// Sessions on this shard, awaited on shutdown.
    pub sessions: TaskTracker,
    /// The shard's child of the gateway's shutdown token: its waiters and lock are the shard's.
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Clone, Copy)]
struct Peer(SocketAddr);

pub fn router(ctx: Arc<ShardCtx>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/symbols", get(symbols))
        .route("/snapshot", get(snapshot))
        .route("/ws", get(upgrade))
        .fallback(not_found)
        .with_state(ctx)
}

/// Serves HTTP on one accepted connection until it closes or is upgraded. A client must send
/// each request's head within the handshake timeout (no slowloris).
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    ctx: Arc<ShardCtx>,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            router.clone().oneshot(req.map(Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.gateway.config.handshake_timeout())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found: see / for the dashboard, /ws for the WebSocket API\n")
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        PAGE,
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

fn staleness_seconds(gw: &Gateway) -> f64 {
    let last = gw.store.last_update_ns();
    let since = if last == 0 { gw.started_wall_ns } else { last };
    wall_ns().saturating_sub(since) as f64 * 1e-9
}

async fn readyz(State(ctx): State<Arc<ShardCtx>>) -> Response {
    let gw = &ctx.gateway;
    let stale = staleness_seconds(gw);
    if !gw.store.is_live() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the feed is not live (still loading, or its upstream is unreachable)\n",
        );
    }
    if gw.store.last_update_ns() != 0 && stale * 1000.0 <= gw.config.staleness_ms as f64 {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no quote from the feed for {stale:.1} s (staleness window {} ms)\n",
                gw.config.staleness_ms
            ),
        )
    }
}

async fn metrics(State(ctx): State<Arc<ShardCtx>>) -> Response {
    let gw = &ctx.gateway;
    let gauges = GaugeValues {
        sessions_active: gw.sessions_active.load(Ordering::Relaxed),
        subscriptions_active: gw.subscriptions_active.load(Ordering::Relaxed),
        symbols: gw.store.table().len() as u64,
        feed_staleness_seconds: staleness_seconds(gw),
        max_connections: u64::from(gw.config.max_connections),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], gw.metrics.render(&gauges))
        .into_response()
}

async fn symbols(State(ctx): State<Arc<ShardCtx>>) -> Response {
    let table = ctx.gateway.store.table();
    let mut out = Vec::with_capacity(table.len() * 10 + 2);
    out.push(b'[');
    for (i, entry) in table.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        proto::json::write_str(&mut out, &entry.name);
    }
    out.push(b']');
    json(StatusCode::OK, out)
}

async fn snapshot(
    State(ctx): State<Arc<ShardCtx>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(list) = query.get("symbols").filter(|s| !s.trim().is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "name the symbols: /snapshot?symbols=AAPL,MSFT\n");
    };
    let table = ctx.gateway.store.table();
    let mut out = vec![b'['];
    for (i, name) in list.split(',').map(str::trim).enumerate() {
        let Some(entry) = table.get(name) else {
            return text(StatusCode::NOT_FOUND, format!("unknown symbol: {name}\n"));
        };
        let Some(latest) = entry.latest() else {
            return text(StatusCode::NOT_FOUND, format!("no quote yet for symbol: {name}\n"));
        };
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&latest.frames.quote);
    }
    out.push(b']');
    json(StatusCode::OK, out)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// `GET /ws`: checks the request, reserves a session, answers 101 and runs the session on
/// this shard once hyper hands over the connection.
async fn upgrade(
    State(ctx): State<Arc<ShardCtx>>,
    Extension(Peer(peer)): Extension<Peer>,
    mut req: Request,
) -> Response {
    let gw = &ctx.gateway;
    let headers = req.headers();
    let reject = |status: StatusCode, message: String| {
        gw.metrics.handshake_rejected(status.as_u16());
        tracing::debug!(%peer, status = status.as_u16(), %message, "upgrade refused");
        text(status, message)
    };
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        let mut response = reject(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an upgrade request\n".into(),
        );
        response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return response;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        let mut response =
            reject(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 required\n".into());
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    if !gw.access.origin_allowed(headers.get(header::ORIGIN)) {
        return reject(StatusCode::FORBIDDEN, "origin not allowed\n".into());
    }
    let entitlement = match gw.access.authenticate(headers, req.uri().query()) {
        Ok(entitlement) => entitlement,
        Err(()) => {
            let mut response = reject(
                StatusCode::UNAUTHORIZED,
                "a valid access token is required: Authorization: Bearer TOKEN, or ?token=TOKEN\n"
                    .into(),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    let permit = match SessionPermit::acquire(gw, peer.ip()) {
        Ok(permit) => permit,
        Err(why) => {
            let mut response =
                reject(StatusCode::SERVICE_UNAVAILABLE, format!("{why}: retry later\n"));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let params = SessionParams {
        gateway: Arc::clone(gw),
        shard: ctx.shard,
        peer,
        entitlement,
        shutdown: ctx.shutdown.clone(),
    };
    let ws_config = gw.ws_config;
    let session = async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => {
                let progress = Progress::new();
                let io = ProgressIo::new(TokioIo::new(upgraded), Arc::clone(&progress));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
                session::run(ws, progress, params).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
        }
    };
    tokio::spawn(ctx.sessions.track_future(session));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts are valid")
}

/// Access control of upgrades: an Origin allow-list and access tokens with entitlements.
#[derive(Default)]
pub struct Access {
    origins: Vec<String>,
    /// Token to entitlement (`None`: every symbol).
    tokens: HashMap<String, Option<Arc<session::Entitlement>>>,
}

impl Access {
    /// From the configuration's lists; `TOKEN=SYM1+SYM2` limits a token to those symbols.
    pub fn new(origins: &[String], tokens: &[String]) -> Access {
        let tokens = tokens
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once('=') {
                None => (t.clone(), None),
                Some((token, symbols)) => {
                    let allowed =
                        symbols.split('+').filter(|s| !s.is_empty()).map(Into::into).collect();
                    (token.to_string(), Some(Arc::new(allowed)))
                }
            })
            .collect();
        Access { origins: origins.iter().filter(|o| !o.is_empty()).cloned().collect(), tokens }
    }

    fn origin_allowed(&self, origin: Option<&HeaderValue>) -> bool {
        self.origins.is_empty()
            || origin
                .and_then(|o| o.to_str().ok())
                .is_some_and(|o| self.origins.iter().any(|a| a == o))
    }

    /// The session's entitlement, or `Err` when tokens are configured and none valid was given.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<session::Entitlement>>, ()> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let from_query =
            query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("token="));
        [bearer, from_query]
            .into_iter()
            .flatten()
            .find_map(|t| self.tokens.get(t).cloned())
            .ok_or(())
    }
}

/// Counts sessions per client address, for the optional per-address cap.
pub fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
