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
use crate::mutate::{self, ImageFailures, Settings};
use crate::registry::Resolver;

/// Request bodies at most: the API server sends objects of at most about 3 MiB.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct App {
    pub settings: Settings,
    pub metrics: Metrics,
    /// The registry lookup; `None` when `KINKO_INJECTOR_IMAGE_LOOKUP=false`.
    pub registry: Option<Resolver>,
}

/// Why an image is not resolved when the lookup is off.
pub const LOOKUP_OFF: &str = "the registry lookup is off (KINKO_INJECTOR_IMAGE_LOOKUP=false)";

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
    // Containers without `command` or `kinko.io/command-<name>` run their image's ENTRYPOINT:
    // resolved from the registry, all at once and within the lookup's time bound.
    let images = parsed.images_to_resolve(&app.settings);
    let (found, failed) = match (&app.registry, images.is_empty()) {
        (_, true) => Default::default(),
        (Some(registry), false) => registry.resolve_all(images, &parsed.platform()).await,
        (None, false) => (
            Default::default(),
            images
                .into_iter()
                .map(|image| (image, LOOKUP_OFF.to_owned()))
                .collect::<ImageFailures>(),
        ),
    };
    for (image, why) in &failed {
        tracing::info!(uid = parsed.uid(), image = %kinko_spec::shorten(image), %why, "image lookup failed");
    }
    let review = parsed.review_with_failures(&app.settings, &found, &failed);
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
