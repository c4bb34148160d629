//! The HTTP API (SPEC §2–§7) on tiny_http: each request is served on its connection's
//! thread with one of a fixed pool of handler contexts (`pool.rs`). The whole route
//! table is the one `match` in [`handle`]; each resource has its own file; every error
//! becomes the same JSON shape in `error`. Only this module touches tiny_http; it talks
//! to SQLite only through `store`.

mod error;
mod events;
mod hooks;
mod input;
mod keycache;
mod keys;
mod pool;
mod ratelimit;

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tiny_http::{Header, Method, Request, Response, Server};

pub use error::ApiError;
pub use keycache::KeyCache;
pub use pool::Handlers;
pub use ratelimit::RateLimiter;

use crate::dispatch::handshake::Verifier;
use crate::metrics::Metrics;
use crate::model::{ApiKey, Role};
use crate::store::{self, Reader, Store};
use crate::target::Policy;

/// What serving one request works with: one of `--handlers` (see `pool.rs`).
pub struct Ctx {
    pub store: Store,
    pub reader: Reader,
    pub limits: Arc<Limits>,
    pub verifier: Verifier,
    pub rate_limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    /// Keys this context looked up for publishes (`keycache.rs`).
    pub keys: KeyCache,
}

/// The API's share of the configuration.
pub struct Limits {
    pub max_body: usize,
    /// A request body must have arrived within this time.
    pub body_deadline: Duration,
    pub max_hooks_per_tenant: u32,
    pub policy: Policy,
    pub trusted_hosts: Vec<String>,
}

/// A successful answer: status and JSON body (`None` for 204).
pub struct Reply {
    status: u16,
    body: Option<Value>,
    /// A body to send verbatim (an idempotent repeat, metrics text, a page).
    raw: Option<String>,
    content_type: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            raw: None,
            content_type: "application/json",
            headers: &[],
        }
    }

    /// JSON text already serialised.
    pub fn raw(status: u16, body: String) -> Reply {
        Reply::text(status, "application/json", body)
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            body: None,
            raw: Some(body),
            content_type,
            headers: &[],
        }
    }

    pub fn with_headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Reply {
        self.headers = headers;
        self
    }

    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            raw: None,
            content_type: "application/json",
            headers: &[],
        }
    }
}

type Handled = Result<Reply, ApiError>;

/// The HTTP server: tiny_http's accept and connection threads, which serve the requests.
pub struct Http {
    /// Kept for its life: dropping it closes the listening socket.
    _server: Server,
}

impl Http {
    /// Serves on an already bound listener, each request on its connection's thread
    /// with a context from `handlers`. The listener's socket timeouts are inherited by
    /// every accepted connection (Linux), which is what drops clients that stall:
    /// tiny_http sets none itself. Request bodies must arrive within `body_deadline`.
    pub fn new(
        listener: std::net::TcpListener,
        body_deadline: Duration,
        handlers: Arc<Handlers>,
    ) -> std::io::Result<Http> {
        tiny_http::set_body_deadline(body_deadline);
        Http::start(listener, Arc::new(move |request| handlers.serve(request)))
    }

    /// The same server doing no work: each request's body is read to its end and the
    /// request answered 202 with `body` as JSON. `hookd bench` measures the bound the
    /// HTTP stack alone puts on publishing with it (src/bench/bounds.rs).
    pub fn noop(listener: std::net::TcpListener, body: &'static str) -> std::io::Result<Http> {
        Http::bare(listener, body, |_| true)
    }

    /// As [`Http::noop`], but each request's body goes to `pass` first, on the
    /// connection's thread, and the answer waits for it (503 if it returns false):
    /// `hookd bench` passes it to a bare writer thread that commits it (the shape of a
    /// publish without hookd's work).
    pub fn bare(
        listener: std::net::TcpListener,
        body: &'static str,
        pass: impl Fn(Vec<u8>) -> bool + Send + Sync + 'static,
    ) -> std::io::Result<Http> {
        let content_type = header("Content-Type", "application/json");
        Http::start(
            listener,
            Arc::new(move |mut request| {
                let mut sink = Vec::new();
                if request.as_reader().read_to_end(&mut sink).is_err() {
                    return;
                }
                let status = if pass(sink) { 202 } else { 503 };
                let mut response = Response::new(
                    status.into(),
                    Vec::new(),
                    Cursor::new(body.as_bytes()),
                    Some(body.len()),
                    None,
                );
                response.add_header(content_type.clone());
                let _ = request.respond(response);
            }),
        )
    }

    fn start(
        listener: std::net::TcpListener,
        serve: tiny_http::InlineHandler,
    ) -> std::io::Result<Http> {
        let server = Server::from_listener_inline(listener, None, Some(serve))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Http { _server: server })
    }
}

fn serve_one(ctx: &Ctx, mut request: Request) {
    let mut template = "unknown";
    let result = catch_unwind(AssertUnwindSafe(|| {
        handle(ctx, &mut request, &mut template)
    }))
    .unwrap_or_else(|_| {
        log::error!("panic while serving {} {}", request.method(), request.url());
        Err(ApiError::internal())
    });
    respond(&ctx.metrics, request, template, result);
}

/// Sends the answer, and counts it under the route `template` it was served by.
fn respond(
    metrics: &Metrics,
    request: Request,
    template: &'static str,
    result: Result<Reply, ApiError>,
) {
    let (status, body, retry_after, content_type, extra) = match result {
        Ok(reply) => (
            reply.status,
            reply.raw.or_else(|| reply.body.map(|b| b.to_string())),
            None,
            reply.content_type,
            reply.headers,
        ),
        Err(e) => (
            e.status,
            Some(e.body()),
            e.retry_after,
            "application/json",
            &[][..],
        ),
    };
    metrics.request(template, status);
    let mut response = Response::new(
        status.into(),
        Vec::new(),
        Cursor::new(body.clone().unwrap_or_default().into_bytes()),
        Some(body.as_ref().map_or(0, String::len)),
        None,
    );
    if body.is_some() {
        response.add_header(header("Content-Type", content_type));
    }
    if let Some(secs) = retry_after {
        response.add_header(header("Retry-After", &secs.to_string()));
    }
    for (name, value) in extra {
        response.add_header(header(name, value));
    }
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a response: {e}");
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// Every (method, path template) the router serves: the list the OpenAPI document
/// is checked against, and what answers 405 rather than 404.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/ui/"),
    ("GET", "/ui/app.js"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
    ("DELETE", "/v1/keys/{id}"),
    ("POST", "/v1/hooks"),
    ("GET", "/v1/hooks"),
    ("GET", "/v1/hooks/{id}"),
    ("PATCH", "/v1/hooks/{id}"),
    ("DELETE", "/v1/hooks/{id}"),
    ("POST", "/v1/hooks/{id}/activate"),
    ("POST", "/v1/hooks/{id}/verify"),
    ("POST", "/v1/hooks/{id}/rotate-secret"),
    ("GET", "/v1/hooks/{id}/deliveries"),
    ("POST", "/v1/hooks/{id}/replay"),
    ("POST", "/v1/deliveries/{id}/retry"),
    ("POST", "/v1/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{id}"),
];

/// The routes, with their path parameters.
enum Route<'a> {
    Dashboard,
    DashboardScript,
    Health,
    Metrics,
    OpenApi,
    Keys,
    Key(&'a str),
    Hooks,
    Hook(&'a str),
    HookActivate(&'a str),
    HookVerify(&'a str),
    HookRotate(&'a str),
    HookDeliveries(&'a str),
    HookReplay(&'a str),
    DeliveryRetry(&'a str),
    Events,
    Event(&'a str),
}

impl Route<'_> {
    /// The path template, as in [`ROUTES`] and the metrics labels.
    fn template(&self) -> &'static str {
        match self {
            Route::Dashboard => "/",
            Route::DashboardScript => "/ui/app.js",
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/v1/openapi.json",
            Route::Keys => "/v1/keys",
            Route::Key(_) => "/v1/keys/{id}",
            Route::Hooks => "/v1/hooks",
            Route::Hook(_) => "/v1/hooks/{id}",
            Route::HookActivate(_) => "/v1/hooks/{id}/activate",
            Route::HookVerify(_) => "/v1/hooks/{id}/verify",
            Route::HookRotate(_) => "/v1/hooks/{id}/rotate-secret",
            Route::HookDeliveries(_) => "/v1/hooks/{id}/deliveries",
            Route::HookReplay(_) => "/v1/hooks/{id}/replay",
            Route::DeliveryRetry(_) => "/v1/deliveries/{id}/retry",
            Route::Events => "/v1/events",
            Route::Event(_) => "/v1/events/{id}",
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Some(match segments.as_slice() {
        [] | ["ui"] => Route::Dashboard,
        ["ui", "app.js"] => Route::DashboardScript,
        ["healthz"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["v1", "openapi.json"] => Route::OpenApi,
        ["v1", "keys"] => Route::Keys,
        ["v1", "keys", id] => Route::Key(id),
        ["v1", "hooks"] => Route::Hooks,
        ["v1", "hooks", id] => Route::Hook(id),
        ["v1", "hooks", id, "activate"] => Route::HookActivate(id),
        ["v1", "hooks", id, "verify"] => Route::HookVerify(id),
        ["v1", "hooks", id, "rotate-secret"] => Route::HookRotate(id),
        ["v1", "hooks", id, "deliveries"] => Route::HookDeliveries(id),
        ["v1", "hooks", id, "replay"] => Route::HookReplay(id),
        ["v1", "deliveries", id, "retry"] => Route::DeliveryRetry(id),
        ["v1", "events"] => Route::Events,
        ["v1", "events", id] => Route::Event(id),
        _ => return None,
    })
}

/// The operator dashboard: one page, no build step, no CDN; it calls the API with the
/// token the operator types in.
const DASHBOARD: &str = include_str!("dashboard.html");
const DASHBOARD_SCRIPT: &str = include_str!("dashboard.js");

/// The page runs only its own script and talks only to this server: even a snippet
/// that escaped escaping could not run or send anything anywhere.
const PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
];

/// The OpenAPI 3.1 document of this API, kept in the repository and checked by a test.
pub const OPENAPI: &str = include_str!("../../openapi.json");

fn handle(ctx: &Ctx, request: &mut Request, template: &mut &'static str) -> Handled {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let route = route(path).ok_or_else(|| ApiError::not_found(&format!("route {path}")))?;
    *template = route.template();
    let method = request.method().clone();
    if !ROUTES.iter().any(|(m, t)| {
        *t == route.template() && (*m == method.as_str() || (*m == "GET" && method == Method::Head))
    }) {
        return Err(ApiError::method_not_allowed(method.as_str(), path));
    }
    // The operational routes answer without a key.
    match route {
        Route::Health => {
            ctx.reader.ping()?;
            return Ok(Reply::json(200, serde_json::json!({"status": "ok"})));
        }
        Route::Metrics => {
            let gauges = ctx.reader.gauges()?;
            return Ok(Reply::text(
                200,
                "text/plain; version=0.0.4",
                ctx.metrics.render(&gauges),
            ));
        }
        Route::OpenApi => return Ok(Reply::raw(200, OPENAPI.to_string())),
        Route::Dashboard => {
            return Ok(
                Reply::text(200, "text/html; charset=utf-8", DASHBOARD.to_string())
                    .with_headers(PAGE_HEADERS),
            )
        }
        Route::DashboardScript => {
            return Ok(Reply::text(
                200,
                "text/javascript; charset=utf-8",
                DASHBOARD_SCRIPT.to_string(),
            )
            .with_headers(PAGE_HEADERS))
        }
        _ => {}
    }
    let publishing = method == Method::Post && matches!(route, Route::Events);
    let key = authenticate(ctx, request, publishing)?;
    ctx.rate_limiter
        .check(&key.id, std::time::Instant::now())
        .map_err(ApiError::rate_limited)?;
    let body = input::read_body(request, ctx.limits.max_body, ctx.limits.body_deadline)?;
    if matches!(method, Method::Post | Method::Patch | Method::Put) {
        input::check_json_content_type(request, &body)?;
    }
    let query = input::Query::parse(&url);
    let idempotency_key = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Idempotency-Key"))
        .map(|h| h.value.as_str().to_string());
    let req = Req {
        ctx,
        key: &key,
        body: &body,
        query: &query,
    };
    match (&method, route) {
        (Method::Post, Route::Keys) => keys::create(&req),
        (Method::Get, Route::Keys) => keys::list(&req),
        (Method::Delete, Route::Key(id)) => keys::revoke(&req, id),
        (Method::Post, Route::Hooks) => hooks::create(&req),
        (Method::Get, Route::Hooks) => hooks::list(&req),
        (Method::Get, Route::Hook(id)) => hooks::get(&req, id),
        (Method::Patch, Route::Hook(id)) => hooks::patch(&req, id),
        (Method::Delete, Route::Hook(id)) => hooks::delete(&req, id),
        (Method::Post, Route::HookActivate(id)) => hooks::activate(&req, id),
        (Method::Post, Route::HookVerify(id)) => hooks::verify(&req, id),
        (Method::Post, Route::HookRotate(id)) => hooks::rotate_secret(&req, id),
        (Method::Get, Route::HookDeliveries(id)) => hooks::deliveries(&req, id),
        (Method::Post, Route::HookReplay(id)) => hooks::replay(&req, id),
        (Method::Post, Route::DeliveryRetry(id)) => hooks::retry_delivery(&req, id),
        (Method::Post, Route::Events) => events::publish(&req, idempotency_key),
        (Method::Get, Route::Events) => events::list(&req),
        (Method::Get, Route::Event(id)) => events::get(&req, id),
        (m, _) => Err(ApiError::method_not_allowed(m.as_str(), path)),
    }
}

/// One authenticated request, as the resource handlers see it.
pub struct Req<'a> {
    pub ctx: &'a Ctx,
    pub key: &'a ApiKey,
    pub body: &'a [u8],
    pub query: &'a input::Query,
}

impl Req<'_> {
    /// Refuses unless the key has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.key.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} key may not do this",
                self.key.role.as_str()
            )))
        }
    }

    /// The tenant a subscriber is bound to; `None` for keys that see every tenant.
    pub fn scope(&self) -> Option<String> {
        match self.key.role {
            Role::Subscriber => self.key.tenant.clone(),
            _ => None,
        }
    }
}

/// The live key for the request's token. A publish may take it from the context's
/// cache: the writer checks it again as it commits (`keycache.rs`).
fn authenticate(ctx: &Ctx, request: &Request, publishing: bool) -> Result<ApiKey, ApiError> {
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| {
            let v = h.value.as_str();
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let hash = store::token_hash(&token);
    if publishing {
        if let Some(key) = ctx.keys.get(&hash) {
            return Ok(key);
        }
    }
    let key = ctx
        .reader
        .key_by_hash(&hash)?
        .ok_or_else(ApiError::unauthorized)?;
    if publishing {
        ctx.keys.put(hash, &key);
    }
    Ok(key)
}
