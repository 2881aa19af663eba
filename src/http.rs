//! The HTTP API (axum): every endpoint of docs/http-api.md, over one shared [`Db`].
//!
//! Safety by default: it listens on 127.0.0.1; on any other address a bearer token is
//! required (compared in constant time). Every request is bounded: header-read time, body
//! size (413 from `Content-Length` before anything is read), body-read and handler time,
//! and concurrency (503 with `Retry-After` past the limit). Errors are always
//! `{"error": {"code", "message", ...}}` with a 4xx for bad input; a panic in a handler is
//! caught and answered as a 500 in the same shape.
//!
//! This module (with the CLI) is the only one that runs an async runtime; the engine below
//! is called on blocking threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::Db;

mod error;
mod handlers;
mod metrics;
mod openapi;

pub use error::ApiError;
pub use metrics::Metrics;

/// Server settings. Every limit is named with its unit.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Required (as `Authorization: Bearer <token>`) on every request but `/healthz`;
    /// mandatory when `listen` is not a loopback address.
    pub token: Option<String>,
    pub body_bytes_max: usize,
    /// Entities in one `/v1/features/query`, rows in one `/v1/training-set` spine.
    pub query_entities_max: usize,
    pub spine_rows_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub handler_timeout_ms: u64,
    pub concurrency_max: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            body_bytes_max: 16 << 20,
            query_entities_max: 10_000,
            spine_rows_max: 1_000_000,
            header_read_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            handler_timeout_ms: 300_000,
            concurrency_max: 256,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// What handlers share: one `Arc`, cloned by every layer of every request.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub db: Arc<Db>,
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    /// One permit per request being handled, server-wide.
    pub permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(db: Arc<Db>, config: ServeConfig) -> AppState {
        AppState(Arc::new(Shared {
            db,
            permits: Arc::new(tokio::sync::Semaphore::new(config.concurrency_max)),
            config,
            metrics: Arc::new(Metrics::default()),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "listening on {0} needs a bearer token (--token-file or FSDB_TOKEN): only loopback addresses may go without"
    )]
    TokenRequired(SocketAddr),
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Constant-time equality for secrets (the time depends only on the lengths).
fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        difference |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    difference == 0
}

/// Whether the request carries the configured bearer token (`/healthz` needs none).
fn authenticated(state: &AppState, request: &Request) -> bool {
    let Some(token) = &state.config.token else {
        return true;
    };
    if request.uri().path() == "/healthz" {
        return true;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    secret_eq(presented.as_bytes(), token.as_bytes())
}

/// Every request's first and last step: give error responses the JSON shape, whoever
/// produced them, then count and time the request by route.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = metrics::route_of(request.method(), request.uri().path());
    let started = Instant::now();
    let response = json_error_shape(next.run(request).await).await;
    state
        .metrics
        .observe(route, response.status(), started.elapsed());
    response
}

/// Errors made outside the handlers (extractor rejections, the body limit, timeouts,
/// unknown routes, panics) rewritten as `{"error": {"code", "message"}}`.
async fn json_error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let mut error = ApiError::from_status(
        status,
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        },
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        error = error.with_retry_after(1);
    }
    let mut response = error.into_response();
    if let Some(value) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Admission, before any of the body is read: past `concurrency_max` requests in handling,
/// shed new ones with 503 and `Retry-After` rather than queue them; then require the bearer
/// token when one is configured.
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = Arc::clone(&state.permits).try_acquire_owned() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many concurrent requests; retry shortly",
        )
        .with_retry_after(1)
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    if !authenticated(&state, &request) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a `GET /v1/features` query string is valid (for the fuzz checks of
/// `crate::testing`).
pub(crate) fn parse_features_query(query: &str) -> bool {
    handlers::FeaturesParams::parse(Some(query)).is_ok()
}

/// The router with every endpoint and layer (also used by tests, without a socket).
pub fn router(state: AppState) -> Router {
    let config = &state.config;
    Router::new()
        .route("/v1/streams/{stream}/events", post(handlers::ingest))
        .route("/v1/features", get(handlers::features))
        .route("/v1/features/query", post(handlers::query))
        .route("/v1/training-set", post(handlers::training_set))
        .route(
            "/v1/registry",
            get(handlers::registry).post(handlers::apply),
        )
        .route(
            "/v1/registry/features/{feature}",
            delete(handlers::remove_feature),
        )
        .route("/healthz", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.handler_timeout_ms),
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_millis(config.body_timeout_ms),
        ))
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            config.body_bytes_max,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the handler failed unexpectedly",
                )
                .into_response()
            },
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serve until SIGINT or SIGTERM; then stop accepting, let in-flight requests finish (for
/// at most `shutdown_grace_ms`), and return so the caller can close the database.
pub fn serve(
    db: Arc<Db>,
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    serve_until(db, config, ready, shutdown_signal())
}

/// [`serve`], stopping when `stop` completes instead of on a signal (for tests and
/// embedding).
pub fn serve_until(
    db: Arc<Db>,
    config: ServeConfig,
    ready: impl FnOnce(SocketAddr) + Send,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    if config.token.is_none() && !config.listen.ip().is_loopback() {
        return Err(ServeError::TokenRequired(config.listen));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            op: "start runtime for",
            addr: config.listen,
            source,
        })?;
    runtime.block_on(async move {
        let addr = config.listen;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Io { op: "listen on", addr, source })?;
        let local = listener.local_addr().map_err(|source| ServeError::Io { op: "listen on", addr, source })?;
        ready(local);
        let header_timeout = Duration::from_millis(config.header_read_timeout_ms);
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        let app = router(AppState::new(db, config));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
                    let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                () = &mut stop => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// A JSON response body.
pub(crate) fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response {
    let mut response = Response::new(Body::from(
        serde_json::to_vec(value).expect("responses serialize"),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::secret_eq;

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"abcd"));
        assert!(!secret_eq(b"", b"a"));
        assert!(secret_eq(b"", b""));
    }
}
