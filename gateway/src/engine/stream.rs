//! A streamed answer: the pump that moves chunks from the upstream to the client through the
//! surface's [`StreamRenderer`], tracks usage from the same chunks, records the answering
//! attempt when the stream ends, settles the request, and only then writes the stream's end
//! (usage and charge, or an error event). Memory stays bounded by what settlement needs: the
//! delivered text while no usage was reported, and the chunks only for keys that store
//! content.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lumina_eventlog::EventLog;
use lumina_schemas::NanoCredits;
use tokio::sync::mpsc;

use crate::engine::attempt::Attempt;
use crate::engine::settle::{AnswerText, Settlement, add_usage, bill};
use crate::metering::events::{Outcome, RequestMeta};
use crate::providers::{ChunkStream, ProviderError, ReportedUsage, StreamChunk};
use crate::telemetry::{self, ResponseInfo};
use crate::wire::TokenUsage;

/// A stream's output could not be written (a chunk failed to serialise).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// How a completed stream ends.
pub struct StreamEnd<'a> {
    /// The usage billed.
    pub usage: TokenUsage,
    /// Its charge.
    pub charge: NanoCredits,
    /// Whether the billed usage differs from the upstream's (the upstream's usage chunk must
    /// then not be shown as is).
    pub replace_usage: bool,
    /// The upstream's own usage chunk, if it sent one.
    pub usage_chunk: Option<&'a Bytes>,
    /// The request.
    pub meta: &'a RequestMeta,
    /// The model that answered upstream.
    pub upstream_model: &'a str,
    /// Lumina's own report on the answer (a Fusion request's `lumina` object, JSON), written
    /// before the usage by surfaces that carry it.
    pub report: Option<Bytes>,
}

/// Writes a stream's [`StreamEnd::report`] from the answering call's own billed usage and
/// charge (the request's, less the calls billed before it).
pub type EndReport = Box<dyn FnOnce(TokenUsage, NanoCredits) -> Option<Bytes> + Send>;

/// How a stream ended, for [`StreamRenderer::record`].
pub enum Ending<'a> {
    /// Completed and settled; its end is written next.
    Completed(&'a StreamEnd<'a>),
    /// Ended by an error (`code` as [`StreamRenderer::fail`] takes it).
    Failed {
        /// What went wrong.
        message: &'a str,
        /// Its code.
        code: &'a str,
    },
    /// The client went away.
    Cancelled,
}

/// How a surface writes a stream in its protocol.
pub trait StreamRenderer: Send + 'static {
    /// Writes one upstream chunk (OpenAI-shaped JSON) for the client.
    fn chunk(&mut self, chunk: &StreamChunk, out: &mut BytesMut) -> Result<(), RenderError>;
    /// Writes the end of a completed, settled stream.
    fn finish(&mut self, end: StreamEnd<'_>, out: &mut BytesMut) -> Result<(), RenderError>;
    /// Writes an error that ends the stream (`code`: `upstream_cut`, `not_recorded`,
    /// `render_failed`).
    fn fail(&mut self, message: &str, code: &str, out: &mut BytesMut);
    /// Work to finish once the stream is settled and before its end is written (the
    /// Responses surface stores the response there); `None` when there is none. Its error on
    /// a completed stream ends the stream with `not_stored` instead of its end.
    fn record(
        &mut self,
        _ending: Ending<'_>,
    ) -> Option<BoxFuture<'static, Result<(), RenderError>>> {
        None
    }
}

/// Moves a stream from the upstream to the client, tracking usage, and settles it.
pub struct Pump {
    /// The request.
    pub meta: Arc<RequestMeta>,
    /// Where attempts are recorded.
    pub log: EventLog,
    /// The answering attempt.
    pub attempt: Attempt,
    /// Time to its first chunk.
    pub ttfb: Duration,
    /// The request body, parsed again only if usage has to be estimated.
    pub body: Bytes,
    /// The most completion tokens the request may be billed for.
    pub allowance: u64,
    /// The request's settlement.
    pub settlement: Settlement,
    /// The surface's protocol.
    pub renderer: Box<dyn StreamRenderer>,
    /// Lumina's report at the end, if the request has one.
    pub report: Option<EndReport>,
    /// To the client.
    pub tx: mpsc::Sender<Bytes>,
}

enum End {
    Completed,
    Cut(ProviderError),
    Unrenderable(RenderError),
    ClientGone,
}

/// What the pump keeps of the answer for settlement.
struct Kept {
    usage: Option<ReportedUsage>,
    usage_chunk: Option<Bytes>,
    /// Delivered text while no usable usage was reported (for an estimate).
    text: String,
    /// Every chunk, for keys that store content.
    chunks: Option<Vec<Bytes>>,
    /// What the answer says of itself, while its attempt's span is recorded.
    info: Option<ResponseInfo>,
    /// The whole delivered text, when the answer's content may be traced.
    traced_text: Option<String>,
}

impl Kept {
    /// Takes `chunk` in; `false` when it is the usage chunk, which is kept back.
    fn take(&mut self, chunk: &StreamChunk) -> bool {
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if chunk.usage_only {
            self.usage_chunk = Some(chunk.data.clone());
            return false;
        }
        if !matches!(self.usage, Some(ReportedUsage::Counted(_))) {
            self.text.push_str(&chunk.text);
        }
        if let Some(info) = self.info.as_mut()
            && (info.id.is_none()
                || memchr::memmem::find(&chunk.data, b"\"finish_reason\":\"").is_some())
        {
            info.read(&chunk.data);
        }
        if let Some(text) = self.traced_text.as_mut() {
            text.push_str(&chunk.text);
        }
        if let Some(chunks) = self.chunks.as_mut() {
            chunks.push(chunk.data.clone());
        }
        true
    }
}

impl Pump {
    /// Pumps `chunks` (whose first, already read, is `first`) to the client.
    pub async fn run(mut self, mut chunks: ChunkStream, first: StreamChunk) {
        let traced = self.attempt.span.is_recording();
        let mut kept = Kept {
            usage: None,
            usage_chunk: None,
            text: String::new(),
            chunks: self.meta.key.store_content.then(Vec::new),
            info: traced.then(ResponseInfo::default),
            traced_text: (traced
                && self
                    .meta
                    .trace
                    .captures_content(self.meta.key.store_content))
            .then(String::new),
        };
        // Chunks already waiting upstream are sent together: one channel message and one
        // socket write instead of one per token.
        let mut out = BytesMut::new();
        let mut next = Some(first);
        let end = 'pump: loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => {
                    let item = tokio::select! {
                        biased;
                        _ = self.tx.closed() => break End::ClientGone,
                        item = chunks.next() => item,
                    };
                    match item {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => break End::Cut(e),
                        None => break End::Completed,
                    }
                }
            };
            if let Err(e) = self.render(&mut kept, &chunk, &mut out) {
                break End::Unrenderable(e);
            }
            let ready_end = loop {
                match chunks.next().now_or_never() {
                    Some(Some(Ok(c))) => {
                        if let Err(e) = self.render(&mut kept, &c, &mut out) {
                            break Some(End::Unrenderable(e));
                        }
                    }
                    Some(Some(Err(e))) => break Some(End::Cut(e)),
                    Some(None) => break Some(End::Completed),
                    None => break None,
                }
            };
            if !out.is_empty() && self.tx.send(out.split().freeze()).await.is_err() {
                break 'pump End::ClientGone;
            }
            if let Some(end) = ready_end {
                break end;
            }
        };
        drop(chunks);
        self.end(end, kept, out).await;
    }

    fn render(
        &mut self,
        kept: &mut Kept,
        chunk: &StreamChunk,
        out: &mut BytesMut,
    ) -> Result<(), RenderError> {
        if kept.take(chunk) {
            self.renderer.chunk(chunk, out)?;
        }
        Ok(())
    }

    /// The surface's [`StreamRenderer::record`] work for `ending`, done.
    async fn recorded(&mut self, ending: Ending<'_>) -> Result<(), RenderError> {
        match self.renderer.record(ending) {
            Some(work) => work.await,
            None => Ok(()),
        }
    }

    /// Records the attempt, settles, and writes the stream's end.
    async fn end(mut self, end: End, kept: Kept, mut out: BytesMut) {
        let failure = match &end {
            End::Cut(e) => Some(e),
            _ => None,
        };
        let deployment = self.attempt.deployment.clone();
        deployment.breaker.record(failure.is_none());
        let record = self
            .attempt
            .ended(&self.meta.trace, Some(self.ttfb), failure);
        if let Err(e) = self
            .log
            .append_event_nowait(&self.meta.attempted(&record))
            .await
        {
            tracing::error!(error = %e, "could not record an upstream attempt");
        }
        let Kept {
            usage,
            usage_chunk,
            text,
            chunks,
            info,
            traced_text,
        } = kept;
        if let Some(info) = info {
            self.attempt.span.set(|| {
                let mut attributes = Vec::new();
                info.attributes(&mut attributes);
                if let Some(answer) = &traced_text {
                    telemetry::content_attributes(
                        &self.body,
                        telemetry::Answered::Text(answer),
                        &mut attributes,
                    );
                }
                attributes
            });
        }
        let billed = bill(
            usage.unwrap_or(ReportedUsage::Missing),
            self.allowance,
            &self.body,
            || AnswerText::Text(text),
        )
        .await;
        let outcome = match &end {
            End::Completed => Outcome::Completed,
            End::Cut(_) | End::Unrenderable(_) => Outcome::CutMidstream,
            End::ClientGone => Outcome::Cancelled,
        };
        let error_class = match &end {
            End::Cut(e) => Some(e.class.as_str().to_string()),
            End::Unrenderable(_) => Some("render_failed".to_string()),
            _ => None,
        };
        let settled = self
            .settlement
            .answered(
                outcome,
                &billed,
                self.attempt.number,
                error_class,
                chunks.as_deref().unwrap_or_default(),
            )
            .await;
        let failed = match (end, settled) {
            (End::ClientGone, _) => {
                if let Err(e) = self.recorded(Ending::Cancelled).await {
                    tracing::error!(error = %e, "could not record a cancelled stream");
                }
                return;
            }
            (End::Cut(e), _) => Some((
                format!(
                    "The upstream {} broke off mid-stream ({}); the answer is incomplete.",
                    deployment.id,
                    e.class.as_str()
                ),
                "upstream_cut",
            )),
            (End::Unrenderable(e), _) => Some((
                format!("The answer could not be written: {e}."),
                "render_failed",
            )),
            (End::Completed, Err(e)) => Some((e.to_string(), "not_recorded")),
            (End::Completed, Ok(charge)) => {
                let meta = self.meta.clone();
                let (prior_usage, prior_charge) = self.settlement.prior();
                let report = self.report.take().and_then(|report| {
                    report(billed.usage, NanoCredits(charge.0 - prior_charge.0))
                });
                let end = StreamEnd {
                    usage: add_usage(prior_usage, billed.usage),
                    charge,
                    replace_usage: billed.anomaly.is_some() || self.settlement.has_prior(),
                    usage_chunk: usage_chunk.as_ref(),
                    meta: &meta,
                    upstream_model: &deployment.upstream_model,
                    report,
                };
                match self.recorded(Ending::Completed(&end)).await {
                    Err(e) => Some((
                        format!("The response could not be stored: {e}."),
                        "not_stored",
                    )),
                    Ok(()) => match self.renderer.finish(end, &mut out) {
                        Ok(()) => None,
                        Err(e) => {
                            out.clear();
                            Some((
                                format!("The end of the answer could not be written: {e}."),
                                "render_failed",
                            ))
                        }
                    },
                }
            }
        };
        if let Some((message, code)) = failed {
            if code != "not_stored"
                && let Err(e) = self
                    .recorded(Ending::Failed {
                        message: &message,
                        code,
                    })
                    .await
            {
                tracing::error!(error = %e, "could not record a failed stream");
            }
            self.renderer.fail(&message, code, &mut out);
        }
        let _ = self.tx.send(out.freeze()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::BufMut;
    use lumina_eventlog::LogOptions;

    use super::*;
    use crate::auth::KeyIdentity;
    use crate::config::{BreakerConfig, ProviderKind, SimulatedConfig};
    use crate::metering::credit::CreditBook;
    use crate::providers::breaker::Breaker;
    use crate::providers::simulated::Simulated;
    use crate::routing::catalog::RoutePath;
    use crate::routing::table::Deployment;

    fn meta() -> Arc<RequestMeta> {
        Arc::new(RequestMeta {
            request_id: "req_1".into(),
            key: Arc::new(KeyIdentity {
                key_id: "key_1".into(),
                account_id: "acct_1".into(),
                project_id: "proj_1".into(),
                rpm: None,
                tpm: None,
                store_content: false,
                prefer: None,
                fusion_barred: false,
                expires_at: None,
                paths: None,
                surfaces: None,
                read_only: false,
                max_parallel_requests: None,
            }),
            trace: Default::default(),
            instance: "test".into(),
            requested_model: "lumina-fast".into(),
            path: RoutePath::Fast,
            started: Instant::now(),
            started_at: 0,
        })
    }

    fn chunk(i: usize) -> StreamChunk {
        let text = format!("w{i} ");
        StreamChunk {
            data: Bytes::from(format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":"{text}"}}}}]}}"#
            )),
            text,
            usage: None,
            usage_only: false,
        }
    }

    /// Writes `chunk` per chunk, `done` at the end, `fail:<code>` on failure; fails to render
    /// chunk number `fail_at`.
    struct Recorder {
        fail_at: Option<usize>,
        seen: usize,
    }

    impl StreamRenderer for Recorder {
        fn chunk(&mut self, _: &StreamChunk, out: &mut BytesMut) -> Result<(), RenderError> {
            self.seen += 1;
            if Some(self.seen) == self.fail_at {
                return Err(RenderError("no JSON for this".into()));
            }
            out.put_slice(b"chunk\n");
            Ok(())
        }

        fn finish(&mut self, _: StreamEnd<'_>, out: &mut BytesMut) -> Result<(), RenderError> {
            out.put_slice(b"done\n");
            Ok(())
        }

        fn fail(&mut self, _: &str, code: &str, out: &mut BytesMut) {
            out.put_slice(format!("fail:{code}\n").as_bytes());
        }
    }

    /// Pumps `n` chunks through `renderer` into `log`; returns what the client received.
    async fn pump(log: EventLog, renderer: Recorder, n: usize) -> String {
        let meta = meta();
        let deployment = Arc::new(Deployment {
            id: "sim/m".into(),
            provider_name: "sim".into(),
            kind: ProviderKind::Simulated,
            upstream_model: "m".into(),
            provider: Arc::new(Simulated::new(SimulatedConfig::default())),
            breaker: Breaker::new(BreakerConfig::default()),
            instruments: Default::default(),
        });
        let body =
            Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        let settlement = Settlement::new(
            log.clone(),
            Arc::new(CreditBook::new()),
            "v1".into(),
            meta.clone(),
            NanoCredits(1_000),
            &body,
        );
        let (tx, mut rx) = mpsc::channel(64);
        let rest: Vec<Result<StreamChunk, ProviderError>> = (1..n).map(|i| Ok(chunk(i))).collect();
        let pump = Pump {
            meta,
            log,
            attempt: Attempt {
                number: 1,
                deployment,
                started_at: 0,
                started: Instant::now(),
                role: None,
                span: Default::default(),
                path: RoutePath::Fast,
            },
            ttfb: Duration::ZERO,
            body,
            allowance: 100,
            settlement,
            renderer: Box::new(renderer),
            report: None,
            tx,
        };
        tokio::spawn(pump.run(Box::pin(futures::stream::iter(rest)), chunk(0)));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    fn log_in(dir: &tempfile::TempDir) -> EventLog {
        EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn a_settled_stream_ends_with_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let out = pump(
            log_in(&dir),
            Recorder {
                fail_at: None,
                seen: 0,
            },
            4,
        )
        .await;
        assert_eq!(out, "chunk\nchunk\nchunk\nchunk\ndone\n");
    }

    #[tokio::test]
    async fn a_chunk_that_cannot_be_written_ends_the_stream_with_an_error_event() {
        let dir = tempfile::tempdir().unwrap();
        let out = pump(
            log_in(&dir),
            Recorder {
                fail_at: Some(3),
                seen: 0,
            },
            6,
        )
        .await;
        assert_eq!(out, "chunk\nchunk\nfail:render_failed\n");
    }

    #[tokio::test]
    async fn a_settlement_the_log_cannot_take_ends_the_stream_with_an_error_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        // Another writer takes the positions the log would write next: every commit fails.
        let other = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        for position in 1..=100 {
            other
                .execute(
                    "INSERT INTO events VALUES (?1, x'00', 'X', 'acct', 0, x'00')",
                    [position],
                )
                .unwrap();
        }
        let out = pump(
            log,
            Recorder {
                fail_at: None,
                seen: 0,
            },
            3,
        )
        .await;
        assert_eq!(out, "chunk\nchunk\nchunk\nfail:not_recorded\n");
    }
}
