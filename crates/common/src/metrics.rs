//! gRPC request metrics: a tower layer that counts every call by service, method and status
//! code and times it, for the Prometheus endpoint.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The request metrics, registered once per process.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    seconds: HistogramFamily,
    in_flight: Family<MethodLabels, Gauge>,
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let seconds: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 20)));
        let in_flight = Family::<MethodLabels, Gauge>::default();
        registry.register(
            "gbrain_grpc_requests",
            "gRPC calls by service, method and status code",
            calls.clone(),
        );
        registry.register(
            "gbrain_grpc_request_duration_seconds",
            "Time from request headers to the end of the response",
            seconds.clone(),
        );
        registry.register(
            "gbrain_grpc_requests_in_flight",
            "gRPC calls being served",
            in_flight.clone(),
        );
        Self {
            calls,
            seconds,
            in_flight,
        }
    }
}

/// Wraps the routes so every call is counted and timed.
///
/// Labels come only from the methods the server serves (`known`, as `/package.Service/Method`);
/// any other path is labelled `unknown`, so requests, authenticated or not, cannot mint new
/// series.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Arc<GrpcMetrics>,
    known: Arc<HashSet<String>>,
}

impl MetricsLayer {
    pub fn new(metrics: GrpcMetrics, known: HashSet<String>) -> Self {
        Self {
            metrics: Arc::new(metrics),
            known: Arc::new(known),
        }
    }
}

/// The `/package.Service/Method` paths of the services in encoded file descriptor sets.
pub fn method_paths(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    use prost::Message;
    let mut out = HashSet::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    out.insert(format!(
                        "/{package}.{name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
            known: Arc::clone(&self.known),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
    known: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        let (service, method) = if self.known.contains(path) {
            split_path(path)
        } else {
            ("unknown".to_string(), "unknown".to_string())
        };
        let labels = MethodLabels { service, method };
        let recorder = Recorder::start(Arc::clone(&self.metrics), labels);
        Box::pin(async move {
            let response = inner.call(req).await?;
            let mut recorder = recorder;
            // A trailers-only response (every error before the handler streams) carries the
            // status in its headers.
            if let Some(code) = response.headers().get("grpc-status") {
                recorder.code = Some(code_name(code.as_bytes()));
            }
            Ok(response.map(|body| MeteredBody {
                inner: body,
                recorder: Some(recorder),
            }))
        })
    }
}

struct Recorder {
    metrics: Arc<GrpcMetrics>,
    labels: MethodLabels,
    start: Instant,
    code: Option<String>,
}

impl Recorder {
    fn start(metrics: Arc<GrpcMetrics>, labels: MethodLabels) -> Self {
        metrics.in_flight.get_or_create(&labels).inc();
        Self {
            metrics,
            labels,
            start: Instant::now(),
            code: None,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.in_flight.get_or_create(&self.labels).dec();
        m.seconds
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        // A body dropped before its trailers means the client went away.
        let code = self.code.take().unwrap_or_else(|| "Cancelled".to_string());
        m.calls
            .get_or_create(&CallLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code,
            })
            .inc();
    }
}

/// A response body that reports the call's status code when its trailers pass.
pub struct MeteredBody<B> {
    inner: B,
    recorder: Option<Recorder>,
}

impl<B> Default for MeteredBody<B>
where
    B: Default,
{
    fn default() -> Self {
        Self {
            inner: B::default(),
            recorder: None,
        }
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status"))
                    && let Some(r) = self.recorder.as_mut()
                {
                    r.code = Some(code_name(code.as_bytes()));
                }
            }
            Poll::Ready(None) => {
                if let Some(mut r) = self.recorder.take()
                    && r.code.is_none()
                {
                    r.code = Some("Unknown".into());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = self.recorder.as_mut() {
                    r.code.get_or_insert_with(|| "Internal".into());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_string();
    let method = parts.next().unwrap_or_default().to_string();
    (service, method)
}

fn code_name(raw: &[u8]) -> String {
    let code = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Unknown);
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths_and_names_codes() {
        assert_eq!(
            split_path("/globalbrain.ingest.v1.IngestService/Upload"),
            (
                "globalbrain.ingest.v1.IngestService".to_string(),
                "Upload".to_string()
            )
        );
        assert_eq!(code_name(b"3"), "InvalidArgument");
        assert_eq!(code_name(b"0"), "Ok");
        assert_eq!(code_name(b"x"), "Unknown");
        let known = method_paths(&[tonic_health::pb::FILE_DESCRIPTOR_SET]);
        assert!(known.contains("/grpc.health.v1.Health/Check"));
    }
}
