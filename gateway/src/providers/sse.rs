//! Server-sent events from an upstream byte stream: `event:` and `data:` fields, events split
//! on blank lines, `\n` or `\r\n` line ends, multi-line data joined. The idle and total
//! deadlines of the attempt apply to every read.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::providers::{ErrorClass, ProviderError, Timeouts};

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` field(s), joined with `\n`.
    pub data: Bytes,
}

/// Splits bytes into events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    event: Option<String>,
    data: BytesMut,
    has_data: bool,
}

impl SseDecoder {
    /// Adds bytes read from the upstream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let newline = memchr::memchr(b'\n', &self.buf)?;
            let mut line = self.buf.split_to(newline + 1);
            line.truncate(newline);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Some(SseEvent {
                        event: self.event.take(),
                        data: self.data.split().freeze(),
                    });
                }
                self.event = None;
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(i) => {
                    let mut value = &line[i + 1..];
                    if value.first() == Some(&b' ') {
                        value = &value[1..];
                    }
                    (&line[..i], value)
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.extend_from_slice(b"\n");
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
    }

    /// Whether unparsed bytes remain (a stream that ends here was cut).
    pub fn has_partial(&self) -> bool {
        self.buf.has_remaining() || self.has_data
    }
}

/// Events of an upstream body under the attempt's idle and total deadlines and a bound on
/// the bytes it may send in all (past it: a `Malformed` error). The stream ends when the body
/// ends; a body that ends inside an event yields a `Cut` error.
pub fn events<S>(
    body: S,
    timeouts: Timeouts,
    deadline: Instant,
    max_bytes: usize,
) -> impl Stream<Item = Result<SseEvent, ProviderError>> + Send
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    futures::stream::try_unfold(
        (body, SseDecoder::default(), false, 0usize),
        move |(mut body, mut decoder, ended, mut read)| async move {
            loop {
                if let Some(event) = decoder.next_event() {
                    return Ok(Some((event, (body, decoder, ended, read))));
                }
                if ended {
                    return Ok(None);
                }
                let idle = Instant::now() + timeouts.idle;
                let until = idle.min(deadline);
                match tokio::time::timeout_at(until, body.next()).await {
                    Err(_) => {
                        return Err(ProviderError::new(
                            ErrorClass::Timeout,
                            "the upstream stream went silent past its deadline",
                        ));
                    }
                    Ok(Some(Ok(bytes))) => {
                        read += bytes.len();
                        if read > max_bytes {
                            return Err(ProviderError::malformed(format!(
                                "the stream passed the {max_bytes}-byte bound for an answer"
                            )));
                        }
                        decoder.push(&bytes);
                    }
                    Ok(Some(Err(e))) => {
                        let mut err = ProviderError::from_reqwest(&e);
                        err.class = ErrorClass::Cut;
                        err.message = "the upstream connection broke mid-stream".into();
                        return Err(err);
                    }
                    Ok(None) => {
                        if decoder.has_partial() {
                            decoder.push(b"\n\n");
                            if let Some(event) = decoder.next_event() {
                                return Ok(Some((event, (body, decoder, true, read))));
                            }
                        }
                        return Ok(None);
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_arbitrary_reads() {
        let input = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: comment\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        for split in 1..input.len() {
            let mut d = SseDecoder::default();
            let mut got = Vec::new();
            for chunk in input.chunks(split) {
                d.push(chunk);
                while let Some(e) = d.next_event() {
                    got.push(e);
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0].event.as_deref(), Some("message_start"));
            assert_eq!(&got[0].data[..], b"{\"a\":1}");
            assert_eq!(&got[1].data[..], b"line1\nline2");
            assert_eq!(got[1].event, None);
            assert_eq!(&got[2].data[..], b"[DONE]");
            assert!(!d.has_partial());
        }
    }
}
