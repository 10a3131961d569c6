//! Tracing, OpenTelemetry and Prometheus for every Tollgate process.
//!
//! - [`init`] installs the `tracing` subscriber: human or JSON logs (filtered by `RUST_LOG`, default
//!   `info,openraft=warn`), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OTLP/gRPC span exporter with the W3C
//!   trace-context propagator so that spans continue into HTTP upstreams.
//! - [`semconv`] holds every span attribute key, [`metrics`] every metric name and the registry.

pub mod metrics;
pub mod semconv;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use metrics::Metrics;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (for log shippers).
    Json,
}

/// Start-up options for [`init`].
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// `service.name` of exported spans.
    pub service_name: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for spans; `None` reads `OTEL_EXPORTER_OTLP_ENDPOINT` (unset: no export).
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            service_name: "tollgate".to_owned(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// Flushes and shuts the span exporter down when dropped.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("tollgate: span exporter shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber and, if `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OTLP exporter.
///
/// Must be called from inside a Tokio runtime when OTLP export is enabled (the batch exporter
/// runs on it).
pub fn init(options: &TelemetryOptions) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));

    let endpoint = options
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty());
    let provider = match endpoint {
        Some(endpoint) => Some(otlp_provider(options, &endpoint)?),
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("tollgate")));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    // Colour codes only for a person at a terminal: a log file or collector gets plain text (and
    // the gateway saves the formatting work on every request span).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match options.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.context("installing the tracing subscriber")?;
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(options: &TelemetryOptions, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    // Other OTEL_EXPORTER_OTLP_* variables (headers, timeout) are read by the exporter itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("building the OTLP span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(options.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
