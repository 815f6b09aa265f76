//! A streamed answer: the pump that moves chunks from the upstream to the client through the
//! surface's [`StreamRenderer`], tracks usage from the same chunks, records the answering
//! attempt when the stream ends, settles the request, and only then writes the stream's end
//! (usage and charge, or an error event). Memory stays bounded by what settlement needs: the
//! delivered text while no usage was reported, and the chunks only for keys that store
//! content.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use lumina_eventlog::EventLog;
use lumina_schemas::NanoCredits;
use tokio::sync::mpsc;

use crate::engine::attempt::Attempt;
use crate::engine::settle::{AnswerText, Settlement, bill};
use crate::metering::events::{Outcome, RequestMeta};
use crate::providers::{ChunkStream, ProviderError, ReportedUsage, StreamChunk};
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
        if let Some(chunks) = self.chunks.as_mut() {
            chunks.push(chunk.data.clone());
        }
        true
    }
}

impl Pump {
    /// Pumps `chunks` (whose first, already read, is `first`) to the client.
    pub async fn run(mut self, mut chunks: ChunkStream, first: StreamChunk) {
        let mut kept = Kept {
            usage: None,
            usage_chunk: None,
            text: String::new(),
            chunks: self.meta.key.store_content.then(Vec::new),
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

    /// Records the attempt, settles, and writes the stream's end.
    async fn end(mut self, end: End, kept: Kept, mut out: BytesMut) {
        let failure = match &end {
            End::Cut(e) => Some(e),
            _ => None,
        };
        let deployment = self.attempt.deployment.clone();
        deployment.breaker.record(failure.is_none());
        let record = self.attempt.record(Some(self.ttfb), failure);
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
        } = kept;
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
        match (end, settled) {
            (End::ClientGone, _) => return,
            (End::Cut(e), _) => {
                let message = format!(
                    "The upstream {} broke off mid-stream ({}); the answer is incomplete.",
                    deployment.id,
                    e.class.as_str()
                );
                self.renderer.fail(&message, "upstream_cut", &mut out);
            }
            (End::Unrenderable(e), _) => {
                let message = format!("The answer could not be written: {e}.");
                self.renderer.fail(&message, "render_failed", &mut out);
            }
            (End::Completed, Err(e)) => {
                self.renderer.fail(&e.to_string(), "not_recorded", &mut out);
            }
            (End::Completed, Ok(charge)) => {
                let finished = self.renderer.finish(
                    StreamEnd {
                        usage: billed.usage,
                        charge,
                        replace_usage: billed.anomaly.is_some(),
                        usage_chunk: usage_chunk.as_ref(),
                        meta: &self.meta,
                        upstream_model: &deployment.upstream_model,
                    },
                    &mut out,
                );
                if let Err(e) = finished {
                    out.clear();
                    let message = format!("The end of the answer could not be written: {e}.");
                    self.renderer.fail(&message, "render_failed", &mut out);
                }
            }
        }
        let _ = self.tx.send(out.freeze()).await;
    }
}
