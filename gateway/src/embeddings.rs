//! OpenAI's embeddings protocol: the `/v1/embeddings` request, parsed and bounded before
//! anything is held or sent; the upstream's answer, checked before it is billed (one vector per
//! input, in the encoding asked for, usage in range); and the answer the client receives, with
//! the usage Lumina billed and its cost.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::providers::{MAX_REPORTED_TOKENS, ProviderError, ReportedUsage};
use crate::wire::{
    InvalidRequest, RawObject, Text, TokenUsage, invalid, is_null, json_string, parse_field,
    parse_object,
};

/// The most inputs one request may embed (OpenAI's own bound).
pub const MAX_INPUTS: usize = 2048;

/// The most dimensions a client may ask for, and an upstream vector may have.
pub const MAX_DIMENSIONS: u64 = 16_384;

/// How the vectors are written: JSON numbers, or base64 of little-endian `f32`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// `float`, the default.
    Float,
    /// `base64`
    Base64,
}

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// A text.
    Text(Cow<'a, str>),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// A parsed `/v1/embeddings` request.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    /// Every top-level member in document order, raw (sent upstream with `model` replaced).
    pub fields: RawObject<'a>,
    /// The requested model.
    pub model: Text<'a>,
    /// The inputs, in order.
    pub inputs: Vec<Input<'a>>,
    /// `encoding_format`.
    pub encoding_format: EncodingFormat,
    /// `dimensions`.
    pub dimensions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInput<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Tokens(Vec<u32>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    TokenLists(Vec<Vec<u32>>),
}

impl<'a> EmbeddingsRequest<'a> {
    /// Parses and validates a request body.
    pub fn parse(body: &'a [u8]) -> Result<EmbeddingsRequest<'a>, InvalidRequest> {
        let fields = parse_object(body)?;
        let present = |name: &str| fields.get(name).filter(|v| !is_null(v));
        let model: Text<'a> = match present("model") {
            Some(raw) => parse_field(raw, "model", "a string")?,
            None => return Err(invalid("Missing required parameter: 'model'.", "model")),
        };
        let Some(raw_input) = present("input") else {
            return Err(invalid("Missing required parameter: 'input'.", "input"));
        };
        let expected = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
        let inputs: Vec<Input<'a>> =
            match parse_field::<RawInput<'a>>(raw_input, "input", expected)? {
                RawInput::One(text) => vec![Input::Text(text)],
                RawInput::Tokens(tokens) if !tokens.is_empty() => vec![Input::Tokens(tokens)],
                RawInput::Texts(texts) => texts.into_iter().map(Input::Text).collect(),
                RawInput::TokenLists(lists) => lists.into_iter().map(Input::Tokens).collect(),
                RawInput::Tokens(_) => Vec::new(),
            };
        if inputs.is_empty() {
            return Err(invalid("'input' must not be empty.", "input"));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(invalid(
                format!(
                    "'input' holds {} items: at most {MAX_INPUTS}.",
                    inputs.len()
                ),
                "input",
            ));
        }
        if let Some(i) = inputs.iter().position(|input| match input {
            Input::Text(t) => t.is_empty(),
            Input::Tokens(t) => t.is_empty(),
        }) {
            return Err(invalid(
                format!("'input[{i}]' must not be empty."),
                format!("input[{i}]"),
            ));
        }
        let encoding_format = match present("encoding_format") {
            None => EncodingFormat::Float,
            Some(raw) => {
                match parse_field::<Text<'_>>(raw, "encoding_format", "a string")?.as_str() {
                    "float" => EncodingFormat::Float,
                    "base64" => EncodingFormat::Base64,
                    other => {
                        return Err(invalid(
                            format!(
                                "'encoding_format' must be 'float' or 'base64' (got '{other}')."
                            ),
                            "encoding_format",
                        ));
                    }
                }
            }
        };
        let dimensions = match present("dimensions") {
            None => None,
            Some(raw) => {
                let d: u64 = parse_field(raw, "dimensions", "a positive integer")?;
                if d == 0 || d > MAX_DIMENSIONS {
                    return Err(invalid(
                        format!("'dimensions' must be in 1..={MAX_DIMENSIONS} (got {d})."),
                        "dimensions",
                    ));
                }
                u32::try_from(d).ok()
            }
        };
        if let Some(raw) = present("user") {
            parse_field::<Text<'_>>(raw, "user", "a string")?;
        }
        if present("lumina").is_some() {
            return Err(invalid(
                "Unknown parameter: 'lumina' (Lumina's routing options are for chat, not embeddings).",
                "lumina",
            ));
        }
        Ok(EmbeddingsRequest {
            fields,
            model,
            inputs,
            encoding_format,
            dimensions,
        })
    }

    /// A quick upper-bound-ish token estimate for limits and the hold, without the tokenizer.
    pub fn quick_estimate(&self) -> u64 {
        self.inputs
            .iter()
            .map(|input| match input {
                Input::Text(t) => (t.len() as u64).div_ceil(4),
                Input::Tokens(t) => t.len() as u64,
            })
            .sum()
    }

    /// The input tokens counted with the tokenizer, for upstreams that report none.
    pub fn count_tokens(&self) -> u64 {
        self.inputs
            .iter()
            .map(|input| match input {
                Input::Text(t) => crate::metering::usage::count_tokens(t),
                Input::Tokens(t) => t.len() as u64,
            })
            .sum()
    }

    /// The body for an OpenAI-compatible upstream.
    pub fn upstream_body(&self, upstream_model: &str) -> Vec<u8> {
        crate::wire::upstream_object(&self.fields, upstream_model, false)
    }
}

/// Counts the numbers of a vector without keeping them.
struct VectorLength(usize);

impl<'de> Deserialize<'de> for VectorLength {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VectorLength;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VectorLength, A::Error> {
                let mut n = 0;
                while seq.next_element::<f64>()?.is_some() {
                    n += 1;
                }
                Ok(VectorLength(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct AnswerProbe<'a> {
    #[serde(borrow)]
    data: Vec<ItemProbe<'a>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ItemProbe<'a> {
    index: u64,
    #[serde(borrow)]
    embedding: &'a RawValue,
}

/// Reads `usage.prompt_tokens` of an embeddings answer.
fn reported_usage(raw: Option<&RawValue>) -> ReportedUsage {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return ReportedUsage::Missing;
    };
    #[derive(Deserialize)]
    struct Usage {
        prompt_tokens: serde_json::Number,
    }
    let Ok(usage) = serde_json::from_str::<Usage>(raw.get()) else {
        return ReportedUsage::Unrecognized;
    };
    match usage.prompt_tokens.as_u64() {
        Some(n) if n <= MAX_REPORTED_TOKENS => ReportedUsage::Counted(TokenUsage {
            prompt_tokens: n,
            ..TokenUsage::default()
        }),
        Some(_) => ReportedUsage::OutOfRange,
        None if usage
            .prompt_tokens
            .as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f > 0.0) =>
        {
            ReportedUsage::OutOfRange
        }
        None => ReportedUsage::Unrecognized,
    }
}

/// Checks an upstream's embeddings answer to `request`: a JSON object whose `data` holds one
/// vector per input, each index once, each in the encoding asked for and of a sane length, and
/// whose usage (when reported) is in range. Returns the usage it reported.
pub fn check_answer(
    body: &[u8],
    request: &EmbeddingsRequest<'_>,
) -> Result<ReportedUsage, ProviderError> {
    let probe: AnswerProbe<'_> = serde_json::from_slice(body).map_err(|_| {
        ProviderError::malformed("the upstream sent an embeddings answer without a data list")
    })?;
    if probe.error.is_some() {
        return Err(ProviderError::malformed(
            "the upstream sent an error instead of embeddings",
        ));
    }
    let n = request.inputs.len();
    if probe.data.len() != n {
        return Err(ProviderError::malformed(format!(
            "the upstream sent {} vectors for {n} inputs",
            probe.data.len()
        )));
    }
    let mut seen = vec![false; n];
    for item in &probe.data {
        let slot = usize::try_from(item.index)
            .ok()
            .and_then(|i| seen.get_mut(i))
            .filter(|s| !**s)
            .ok_or_else(|| {
                ProviderError::malformed("the upstream sent a vector index out of range or twice")
            })?;
        *slot = true;
        let length = match request.encoding_format {
            EncodingFormat::Float => serde_json::from_str::<VectorLength>(item.embedding.get())
                .map(|v| v.0 as u64)
                .ok(),
            EncodingFormat::Base64 => serde_json::from_str::<Cow<'_, str>>(item.embedding.get())
                .ok()
                .and_then(|s| base64_floats(&s)),
        };
        match length {
            Some(len) if (1..=MAX_DIMENSIONS).contains(&len) => {}
            _ => {
                return Err(ProviderError::malformed(
                    "the upstream sent a vector that is not one in the encoding asked for",
                ));
            }
        }
    }
    match reported_usage(probe.usage) {
        ReportedUsage::OutOfRange => Err(ProviderError::malformed(
            "the upstream reported a token count beyond any sane bound",
        )),
        usage => Ok(usage),
    }
}

/// The number of `f32`s a base64 vector holds, if it is one.
fn base64_floats(text: &str) -> Option<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    (bytes.len() % 4 == 0).then_some(bytes.len() as u64 / 4)
}

/// The answer the client receives: the upstream's, with `usage` replaced by what Lumina billed
/// (`prompt_tokens`, `total_tokens`) and its `cost` in credits, exact to the nano-credit.
pub fn render(body: &[u8], usage: TokenUsage, cost: &str) -> Bytes {
    let usage_json = format!(
        "{{\"prompt_tokens\":{0},\"total_tokens\":{0},\"cost\":{cost}}}",
        usage.prompt_tokens
    );
    let members: RawObject<'_> = match std::str::from_utf8(body)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok())
    {
        Some(m) => m,
        None => return Bytes::copy_from_slice(body),
    };
    let mut out = Vec::with_capacity(body.len() + usage_json.len() + 16);
    out.push(b'{');
    for (k, v) in members.0.iter().filter(|(k, _)| k.as_str() != "usage") {
        out.extend_from_slice(json_string(k.as_str()).as_bytes());
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"usage\":");
    out.extend_from_slice(usage_json.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> Option<String> {
        EmbeddingsRequest::parse(body.as_bytes())
            .err()
            .and_then(|e| e.param)
    }

    #[test]
    fn inputs_come_as_a_string_a_list_or_token_ids() {
        let one = EmbeddingsRequest::parse(br#"{"model":"m","input":"hello"}"#).unwrap();
        assert_eq!(one.inputs, [Input::Text("hello".into())]);
        assert_eq!(one.encoding_format, EncodingFormat::Float);
        let list = EmbeddingsRequest::parse(
            br#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":8}"#,
        )
        .unwrap();
        assert_eq!(list.inputs.len(), 2);
        assert_eq!(list.encoding_format, EncodingFormat::Base64);
        assert_eq!(list.dimensions, Some(8));
        let tokens = EmbeddingsRequest::parse(br#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert_eq!(tokens.inputs, [Input::Tokens(vec![1, 2, 3])]);
        let lists = EmbeddingsRequest::parse(br#"{"model":"m","input":[[1],[2,3]]}"#).unwrap();
        assert_eq!(lists.inputs.len(), 2);
        assert_eq!(lists.quick_estimate(), 3);
    }

    #[test]
    fn bad_inputs_name_their_parameter() {
        assert_eq!(refused(r#"{"input":"x"}"#).as_deref(), Some("model"));
        assert_eq!(refused(r#"{"model":"m"}"#).as_deref(), Some("input"));
        assert_eq!(
            refused(r#"{"model":"m","input":[]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":["a",""]}"#).as_deref(),
            Some("input[1]")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":[1,"a"]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":[-1]}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":{"a":1}}"#).as_deref(),
            Some("input")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":"x","encoding_format":"int8"}"#).as_deref(),
            Some("encoding_format")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":"x","dimensions":0}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            refused(r#"{"model":"m","input":"x","dimensions":1.5}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            refused(r#"{"model":5,"input":"x"}"#).as_deref(),
            Some("model")
        );
        let many = format!(
            r#"{{"model":"m","input":[{}]}}"#,
            vec!["\"a\""; MAX_INPUTS + 1].join(",")
        );
        assert_eq!(refused(&many).as_deref(), Some("input"));
        assert!(
            EmbeddingsRequest::parse(br#"{"model":"m","input":"a","input":["b","c"]}"#).is_err()
        );
        assert!(EmbeddingsRequest::parse(b"[1]").is_err());
    }

    #[test]
    fn an_answer_needs_one_vector_per_input_in_the_encoding_asked_for() {
        let two = EmbeddingsRequest::parse(br#"{"model":"m","input":["a","b"]}"#).unwrap();
        let ok = br#"{"object":"list","data":[{"index":1,"embedding":[0.5,1]},{"index":0,"embedding":[0.1,-2e-3]}],"usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        assert_eq!(
            check_answer(ok, &two).unwrap(),
            ReportedUsage::Counted(TokenUsage {
                prompt_tokens: 2,
                ..TokenUsage::default()
            })
        );
        for bad in [
            r#"{"data":[{"index":0,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":[1]},{"index":2,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":"AAAAAA=="},{"index":1,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":[]},{"index":1,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":["x"]},{"index":1,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":[1]},{"index":1,"embedding":[1]}],"usage":{"prompt_tokens":1e300}}"#,
            r#"{"error":{"message":"no"}}"#,
            r#"[]"#,
        ] {
            assert!(check_answer(bad.as_bytes(), &two).is_err(), "{bad}");
        }
        let b64 =
            EmbeddingsRequest::parse(br#"{"model":"m","input":"a","encoding_format":"base64"}"#)
                .unwrap();
        assert!(
            check_answer(
                br#"{"data":[{"index":0,"embedding":"AAAAAAAAgD8="}]}"#,
                &b64
            )
            .is_ok()
        );
        assert!(check_answer(br#"{"data":[{"index":0,"embedding":"AAA="}]}"#, &b64).is_err());
        assert_eq!(
            check_answer(
                br#"{"data":[{"index":0,"embedding":"AAAAAAAAgD8="}],"usage":{"total_tokens":3}}"#,
                &b64
            )
            .unwrap(),
            ReportedUsage::Unrecognized
        );
    }

    #[test]
    fn the_rendered_answer_carries_the_billed_usage_and_its_cost() {
        let out = render(
            br#"{"object":"list","data":[],"usage":{"prompt_tokens":99,"total_tokens":99}}"#,
            TokenUsage {
                prompt_tokens: 7,
                ..TokenUsage::default()
            },
            "0.000000140",
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 7);
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["object"], "list");
        assert!(String::from_utf8_lossy(&out).contains("\"cost\":0.000000140"));
    }
}
