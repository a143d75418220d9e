//! The HTTP surface, a thin adapter around [`crate::mutate`]: `POST /mutate`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`. A body that is not an AdmissionReview is a 400 with a
//! message; a body over [`MAX_BODY_BYTES`] a 413; the decision itself never fails.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::metrics::Metrics;
use crate::mutate::{self, ImageCommands, Settings};

/// Request bodies at most: the API server sends objects of at most about 3 MiB.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct App {
    pub settings: Settings,
    pub metrics: Metrics,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(mutate_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "errors": [message] })),
    )
        .into_response()
}

async fn metrics_handler(State(app): State<Arc<App>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn mutate_handler(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let body: Bytes =
        match axum::body::to_bytes(Body::new(request.into_body()), MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                app.metrics.record("error", started.elapsed());
                let too_big = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || e.to_string().contains("length limit");
                return if too_big {
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("the body is over {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    error(StatusCode::BAD_REQUEST, "the body could not be read")
                };
            }
        };
    let parsed = match mutate::parse(&body) {
        Ok(parsed) => parsed,
        Err(bad) => {
            app.metrics.record("error", started.elapsed());
            tracing::info!(problem = %bad, "not an AdmissionReview");
            return error(StatusCode::BAD_REQUEST, &bad.0);
        }
    };
    // The registry lookup (resolving `parsed.images_to_resolve(..)`) is not built yet: every
    // container without `command` or `kinko.io/command-<name>` is denied with the fix.
    let review = parsed.review(&app.settings, &ImageCommands::new());
    app.metrics
        .record(review.outcome.label(), started.elapsed());
    match &review.message {
        Some(message) => {
            tracing::info!(uid = parsed.uid(), outcome = review.outcome.label(), %message, "review")
        }
        None => tracing::info!(
            uid = parsed.uid(),
            outcome = review.outcome.label(),
            "review"
        ),
    }
    ([(CACHE_CONTROL, "no-store")], axum::Json(review.response)).into_response()
}
