//! The AWS side shared by DynamoDB storage and the KMS seal: one SDK configuration from the
//! standard chain (environment, profile, IRSA web identity, instance metadata) on our one
//! rustls stack, and the one retry policy for AWS calls.
//!
//! The SDK's own retries are switched off: its retry token bucket gives up under sustained
//! throttling, and two layered policies would multiply attempts. Ours retries only what is
//! worth retrying (throttling, 5xx, timeouts, connection failures, transaction conflicts),
//! with full-jitter exponential back-off, and says why it gave up.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
pub use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use rand::Rng;

/// Attempts per call before it fails; with the back-off below that is about 6 s of trying.
pub const MAX_ATTEMPTS: u32 = 10;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Loads region, credentials and endpoints the way every AWS tool does (`AWS_REGION`,
/// `AWS_ENDPOINT_URL[_DYNAMODB|_KMS]`, `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, ...).
pub async fn sdk_config() -> SdkConfig {
    loader().load().await
}

/// The standard chain with our HTTPS client, timeouts and retry policy; tests set the
/// endpoint, region and credentials on it explicitly.
pub fn loader() -> aws_config::ConfigLoader {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
}

/// Error codes AWS documents as "slow down or try again" (DynamoDB and KMS).
const TRANSIENT_CODES: [&str; 8] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    "KMSInternalException",
    "DependencyTimeoutException",
];

/// Reasons inside a cancelled DynamoDB transaction that mean "not applied, try again".
pub const TRANSIENT_CANCELLATION_CODES: [&str; 4] = [
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// Whether a failed call may succeed when repeated unchanged.
pub fn is_transient<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || service
                    .err()
                    .code()
                    .is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    }
}

/// One line for logs and error bodies: the AWS error code, status and message, or the chain
/// of transport errors. Never the raw response or request.
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = error {
        let inner = service.err();
        return format!(
            "{} (HTTP {}): {}",
            inner.code().unwrap_or("unknown error"),
            service.raw().status().as_u16(),
            inner.message().unwrap_or("no message")
        );
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Full jitter: a random wait below an exponentially growing, capped ceiling.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
}

/// Runs `call` until it succeeds, fails for good (`retry` says no), or runs out of attempts.
pub async fn with_retries<T, E, F, Fut>(
    mut call: F,
    retry: impl Fn(&E) -> bool,
) -> Result<T, (E, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                attempt += 1;
                if attempt >= MAX_ATTEMPTS || !retry(&error) {
                    return Err((error, attempt));
                }
                crate::metrics::METRICS.aws_retry();
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::get_item::GetItemError;

    fn service(status: u16, code: &str) -> SdkError<GetItemError, HttpResponse> {
        let error = GetItemError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("details")
                .build(),
        );
        let raw = HttpResponse::new(
            http::StatusCode::from_u16(status).unwrap().into(),
            "".into(),
        );
        SdkError::service_error(error, raw)
    }

    #[test]
    fn throttling_server_errors_and_transport_failures_are_transient() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            assert!(is_transient(&service(400, code)), "{code}");
        }
        assert!(is_transient(&service(500, "InternalServerError")));
        assert!(is_transient(&service(503, "Anything")), "any 5xx");
        let timeout: SdkError<GetItemError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(is_transient(&timeout));
        let refused: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert!(is_transient(&refused));

        for code in [
            "ResourceNotFoundException",
            "AccessDeniedException",
            "ValidationException",
        ] {
            assert!(!is_transient(&service(400, code)), "{code} is final");
        }
        let misuse: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::user("bad endpoint".into()));
        assert!(!is_transient(&misuse));
    }

    #[test]
    fn descriptions_name_the_code_status_and_message() {
        assert_eq!(
            describe(&service(400, "ResourceNotFoundException")),
            "ResourceNotFoundException (HTTP 400): details"
        );
        let refused: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert!(
            describe(&refused).ends_with("connection refused"),
            "{}",
            describe(&refused)
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..40 {
            let wait = backoff(attempt);
            assert!(wait <= BACKOFF_CAP);
            assert!(wait <= BACKOFF_BASE * 2u32.pow(attempt.min(16)));
        }
        let waits: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(waits.len() > 1, "waits are jittered, not fixed");
    }

    #[tokio::test]
    async fn retries_only_what_is_retryable_and_gives_up() {
        let mut calls = 0;
        let result: Result<(), (&str, u32)> = with_retries(
            || {
                calls += 1;
                let outcome = if calls < 3 { Err("busy") } else { Ok(()) };
                async move { outcome }
            },
            |e| *e == "busy",
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result: Result<(), _> = with_retries(
            || {
                calls += 1;
                async { Err("denied") }
            },
            |e| *e == "busy",
        )
        .await;
        assert_eq!(result, Err(("denied", 1)), "a final error is not retried");

        let result: Result<(), _> = with_retries(|| async { Err("busy") }, |_| true).await;
        assert_eq!(result, Err(("busy", MAX_ATTEMPTS)));
    }
}
