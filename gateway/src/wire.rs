//! OpenAI Chat Completions on the wire: the request view Lumina parses once (borrowing the
//! client's bytes; unknown fields kept as raw JSON to pass on), the body an OpenAI-compatible
//! upstream receives (the client's fields with `model` and `stream_options` rewritten), and the
//! response and chunk shapes Lumina writes itself for translated or simulated upstreams.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use lumina_schemas::NanoCredits;

use crate::json_keys::{self, DuplicateKey, KeyCheck};
use crate::routing::catalog::RoutePath;
use crate::routing::policy::Prefer;

/// A JSON object key, borrowed from the input unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A borrowed-or-owned string field (borrowed unless the JSON string holds escapes).
pub type Text<'a> = Key<'a>;

impl Key<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON object's members in document order, values left raw.
#[derive(Debug, Default)]
pub struct RawObject<'a>(pub Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> RawObject<'a> {
    /// The raw value of member `name`.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| *v)
    }
}

/// Whether a raw value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The largest `max_tokens` (or `max_completion_tokens`) a request may ask for: far above any
/// model's output, low enough that every count derived from it stays exact.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000_000;

/// The refusal of a body that names a member twice.
pub fn duplicate_member(d: DuplicateKey) -> InvalidRequest {
    InvalidRequest {
        message: format!(
            "The request body has the member '{}' more than once. Send each member once.",
            d.path
        ),
        param: Some(d.path),
    }
}

/// Why a request body was refused: what is wrong and which parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// For people.
    pub message: String,
    /// The parameter, as OpenAI names it (`messages[0].role`).
    pub param: Option<String>,
}

/// A refusal of `param`.
pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param.into()),
    }
}

/// Reads `raw` as a `T`, or says that `param` is not `expected`.
pub fn parse_field<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    param: &str,
    expected: &str,
) -> Result<T, InvalidRequest> {
    serde_json::from_str(raw.get()).map_err(|_| {
        invalid(
            format!("Invalid type for '{param}': expected {expected}."),
            param,
        )
    })
}

/// One content part of a message.
#[derive(Debug, Deserialize)]
pub struct ContentPart<'a> {
    /// `text`, `image_url`, `input_audio`, `file`, …
    #[serde(rename = "type", borrow)]
    pub kind: Text<'a>,
    /// The text of a `text` part.
    #[serde(default, borrow)]
    pub text: Option<Text<'a>>,
    /// The image of an `image_url` part.
    #[serde(default, borrow)]
    pub image_url: Option<ImageUrl<'a>>,
}

/// An image reference.
#[derive(Debug, Deserialize)]
pub struct ImageUrl<'a> {
    /// An `https://` URL or a `data:` URL.
    #[serde(borrow)]
    pub url: Text<'a>,
}

/// A message's content: plain text or parts.
#[derive(Debug)]
pub enum Content<'a> {
    /// A string.
    Text(Text<'a>),
    /// An array of parts.
    Parts(Vec<ContentPart<'a>>),
}

impl Content<'_> {
    /// Every text in the content, concatenated by the visitor.
    pub fn for_each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            Content::Text(t) => f(t.as_str()),
            Content::Parts(parts) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        f(t.as_str());
                    }
                }
            }
        }
    }
}

/// A function call an assistant made.
#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    /// Call id, echoed by the tool message that answers it.
    #[serde(borrow)]
    pub id: Text<'a>,
    /// The function and its JSON arguments.
    #[serde(borrow)]
    pub function: FunctionCall<'a>,
}

/// A function name and its arguments (a JSON document in a string).
#[derive(Debug, Deserialize)]
pub struct FunctionCall<'a> {
    /// Function name.
    #[serde(borrow)]
    pub name: Text<'a>,
    /// Arguments as JSON text.
    #[serde(default, borrow)]
    pub arguments: Option<Text<'a>>,
}

/// One message of the conversation.
#[derive(Debug)]
pub struct Message<'a> {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    pub role: Text<'a>,
    /// The content, when present.
    pub content: Option<Content<'a>>,
    /// Calls an assistant message made.
    pub tool_calls: Vec<ToolCall<'a>>,
    /// The call a tool message answers.
    pub tool_call_id: Option<Text<'a>>,
}

impl Message<'_> {
    /// Characters of text in the message.
    pub fn text_len(&self) -> usize {
        let mut n = 0;
        if let Some(c) = &self.content {
            c.for_each_text(|t| n += t.len());
        }
        for call in &self.tool_calls {
            n += call.function.name.as_str().len();
            n += call
                .function
                .arguments
                .as_ref()
                .map_or(0, |a| a.as_str().len());
        }
        n
    }
}

/// A tool the model may call.
#[derive(Debug)]
pub struct Tool<'a> {
    /// Function name.
    pub name: Text<'a>,
    /// What it does.
    pub description: Option<Text<'a>>,
    /// JSON Schema of its parameters, raw.
    pub parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    function: Option<FunctionWire<'a>>,
}

#[derive(Deserialize)]
struct FunctionWire<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    description: Option<Text<'a>>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A chat completion request, parsed once and kept close to the client's bytes.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// Every top-level member in document order, raw.
    pub fields: RawObject<'a>,
    /// The requested model.
    pub model: Text<'a>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Choices asked for.
    pub n: u32,
    /// The conversation.
    pub messages: Vec<Message<'a>>,
    /// Tools offered.
    pub tools: Vec<Tool<'a>>,
    /// `tool_choice`, raw.
    pub tool_choice: Option<&'a RawValue>,
    /// `reasoning_effort`.
    pub reasoning_effort: Option<Text<'a>>,
    /// `response_format.type`.
    pub response_format: Option<Text<'a>>,
    /// Stop sequences.
    pub stop: Vec<Text<'a>>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `lumina.routing`: how `lumina-auto` should choose; never sent upstream.
    pub routing: RoutingOptions,
    /// `lumina.fusion`: this request's Fusion panel settings, over the configured ones.
    pub fusion: Option<FusionOptions>,
}

/// A request's `"lumina": {"fusion": {…}}`: overrides of the configured Fusion panel.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FusionOptions {
    /// `panel`: paths (`fast`, `balanced`, `reasoning`) or deployments (`provider/model`).
    pub panel: Option<Vec<String>>,
    /// `quorum`: members that must answer before synthesis starts.
    pub quorum: Option<usize>,
    /// `max_cost`: the most this request may hold and be charged, in credits.
    pub max_cost: Option<NanoCredits>,
    /// `member_deadline_ms`: how long synthesis waits for members beyond the quorum.
    pub member_deadline_ms: Option<u64>,
}

/// Most members of a Fusion panel.
pub const MAX_PANEL: usize = 8;

/// A request's `"lumina": {"routing": {…}}`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RoutingOptions {
    /// `prefer`: `cost`, `balanced` or `quality`.
    pub prefer: Option<Prefer>,
    /// `min_path`: the weakest path `lumina-auto` may choose.
    pub min_path: Option<RoutePath>,
    /// `max_path`: the strongest.
    pub max_path: Option<RoutePath>,
}

/// Parses the `lumina` member: an object of `routing` and `fusion`.
fn parse_lumina(raw: &RawValue) -> Result<(RoutingOptions, Option<FusionOptions>), InvalidRequest> {
    #[derive(Deserialize)]
    struct Lumina<'a> {
        #[serde(borrow, default)]
        routing: Option<&'a RawValue>,
        #[serde(borrow, default)]
        fusion: Option<&'a RawValue>,
    }
    let members: serde_json::Map<String, serde_json::Value> =
        parse_field(raw, "lumina", "an object")?;
    if let Some(name) = members
        .keys()
        .find(|k| !matches!(k.as_str(), "routing" | "fusion"))
    {
        return Err(invalid(
            format!("Unknown parameter: 'lumina.{name}'."),
            format!("lumina.{name}"),
        ));
    }
    let lumina: Lumina<'_> = parse_field(raw, "lumina", "an object")?;
    let routing = match lumina.routing.filter(|v| !is_null(v)) {
        Some(raw) => parse_routing(raw)?,
        None => RoutingOptions::default(),
    };
    let fusion = match lumina.fusion.filter(|v| !is_null(v)) {
        Some(raw) => Some(parse_fusion(raw)?),
        None => None,
    };
    Ok((routing, fusion))
}

/// Parses `lumina.fusion`.
fn parse_fusion(raw: &RawValue) -> Result<FusionOptions, InvalidRequest> {
    let members: serde_json::Map<String, serde_json::Value> =
        parse_field(raw, "lumina.fusion", "an object")?;
    let raw_members: BTreeMap<&str, &RawValue> = parse_field(raw, "lumina.fusion", "an object")?;
    let mut options = FusionOptions::default();
    for (key, value) in &members {
        let param = format!("lumina.fusion.{key}");
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "panel" => {
                let panel: Vec<String> = serde_json::from_value(value.clone()).map_err(|_| {
                    invalid(
                        format!("Invalid '{param}': expected an array of paths or deployments."),
                        param.as_str(),
                    )
                })?;
                if !(2..=MAX_PANEL).contains(&panel.len()) {
                    return Err(invalid(
                        format!(
                            "Invalid '{param}': a panel has 2 to {MAX_PANEL} members (got {}).",
                            panel.len()
                        ),
                        param.as_str(),
                    ));
                }
                options.panel = Some(panel);
            }
            "quorum" => {
                let quorum = value.as_u64().filter(|q| *q >= 1).ok_or_else(|| {
                    invalid(
                        format!("Invalid '{param}': expected a positive integer."),
                        param.as_str(),
                    )
                })?;
                options.quorum = Some(usize::try_from(quorum).unwrap_or(usize::MAX));
            }
            "member_deadline_ms" => {
                let ms = value.as_u64().filter(|ms| *ms >= 1).ok_or_else(|| {
                    invalid(
                        format!("Invalid '{param}': expected a positive integer."),
                        param.as_str(),
                    )
                })?;
                options.member_deadline_ms = Some(ms);
            }
            "max_cost" => {
                // The number's own digits, never a float: credits are exact.
                let text = raw_members.get(key.as_str()).map_or("", |r| r.get());
                let digits = text.trim_matches('"');
                let cost = NanoCredits::parse_credits(digits)
                    .ok()
                    .filter(|c| c.is_positive())
                    .ok_or_else(|| {
                        invalid(
                            format!("Invalid '{param}': expected a positive number of credits."),
                            param.as_str(),
                        )
                    })?;
                options.max_cost = Some(cost);
            }
            _ => {
                return Err(invalid(
                    format!("Unknown parameter: '{param}'."),
                    param.as_str(),
                ));
            }
        }
    }
    if let (Some(panel), Some(quorum)) = (&options.panel, options.quorum)
        && quorum > panel.len()
    {
        return Err(invalid(
            "'lumina.fusion.quorum' is larger than the panel.",
            "lumina.fusion.quorum",
        ));
    }
    Ok(options)
}

/// Parses `lumina.routing`.
fn parse_routing(raw: &RawValue) -> Result<RoutingOptions, InvalidRequest> {
    let mut options = RoutingOptions::default();
    {
        let routing: serde_json::Map<String, serde_json::Value> =
            parse_field(raw, "lumina.routing", "an object")?;
        for (key, v) in &routing {
            let param = format!("lumina.routing.{key}");
            let text = v.as_str();
            match key.as_str() {
                "prefer" => {
                    options.prefer = Some(text.and_then(Prefer::parse).ok_or_else(|| {
                        invalid(
                            format!("Invalid '{param}': expected 'cost', 'balanced' or 'quality'."),
                            param.as_str(),
                        )
                    })?);
                }
                "min_path" | "max_path" => {
                    let path = text.and_then(RoutePath::parse_tier).ok_or_else(|| {
                        invalid(
                            format!(
                                "Invalid '{param}': expected 'fast', 'balanced' or 'reasoning'."
                            ),
                            param.as_str(),
                        )
                    })?;
                    if key == "min_path" {
                        options.min_path = Some(path);
                    } else {
                        options.max_path = Some(path);
                    }
                }
                _ => {
                    return Err(invalid(
                        format!("Unknown parameter: '{param}'."),
                        param.as_str(),
                    ));
                }
            }
        }
    }
    if let (Some(min), Some(max)) = (options.min_path, options.max_path)
        && min.rank() > max.rank()
    {
        return Err(invalid(
            "'lumina.routing.min_path' is stronger than 'lumina.routing.max_path'.",
            "lumina.routing.min_path",
        ));
    }
    Ok(options)
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormatWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
}

/// A request body's members: UTF-8, a JSON object, no member named twice at any depth.
pub fn parse_object(body: &[u8]) -> Result<RawObject<'_>, InvalidRequest> {
    let text = std::str::from_utf8(body).map_err(|e| InvalidRequest {
        message: format!("The request body is not valid UTF-8 ({e})."),
        param: None,
    })?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return Err(InvalidRequest {
            message: "We could not parse the JSON body of your request: expected a JSON object."
                .into(),
            param: None,
        });
    }
    if let KeyCheck::Duplicate(d) = json_keys::check(body) {
        return Err(duplicate_member(d));
    }
    serde_json::from_str(text).map_err(|e| InvalidRequest {
        message: format!("We could not parse the JSON body of your request ({e})."),
        param: None,
    })
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates a request body.
    pub fn parse(body: &'a [u8]) -> Result<ChatRequest<'a>, InvalidRequest> {
        let fields = parse_object(body)?;
        let model_raw = fields
            .get("model")
            .filter(|v| !is_null(v))
            .ok_or_else(|| invalid("Missing required parameter: 'model'.", "model"))?;
        let model: Text<'a> = parse_field(model_raw, "model", "a string")?;
        let messages_raw = fields
            .get("messages")
            .filter(|v| !is_null(v))
            .ok_or_else(|| invalid("Missing required parameter: 'messages'.", "messages"))?;
        let messages = parse_messages(messages_raw)?;
        let opt_bool = |name: &str| -> Result<bool, InvalidRequest> {
            match fields.get(name).filter(|v| !is_null(v)) {
                Some(raw) => parse_field(raw, name, "a boolean"),
                None => Ok(false),
            }
        };
        let stream = opt_bool("stream")?;
        let include_usage = match fields.get("stream_options").filter(|v| !is_null(v)) {
            Some(raw) => {
                let o: StreamOptions = parse_field(raw, "stream_options", "an object")?;
                o.include_usage.unwrap_or(false)
            }
            None => false,
        };
        let opt_u64 = |name: &str| -> Result<Option<u64>, InvalidRequest> {
            match fields.get(name).filter(|v| !is_null(v)) {
                Some(raw) => parse_field(raw, name, "a non-negative integer").map(Some),
                None => Ok(None),
            }
        };
        let max_tokens = match opt_u64("max_completion_tokens")? {
            Some(n) => Some(("max_completion_tokens", n)),
            None => opt_u64("max_tokens")?.map(|n| ("max_tokens", n)),
        };
        if let Some((name, n)) = max_tokens
            && n > MAX_OUTPUT_TOKENS
        {
            return Err(invalid(
                format!("'{name}' is too large: at most {MAX_OUTPUT_TOKENS} tokens."),
                name,
            ));
        }
        let max_tokens = max_tokens.map(|(_, n)| n);
        let n = match opt_u64("n")? {
            Some(0) => return Err(invalid("'n' must be at least 1.", "n")),
            Some(n) => u32::try_from(n).map_err(|_| invalid("'n' is too large.", "n"))?,
            None => 1,
        };
        let opt_f64 = |name: &str| -> Result<Option<f64>, InvalidRequest> {
            match fields.get(name).filter(|v| !is_null(v)) {
                Some(raw) => parse_field(raw, name, "a number").map(Some),
                None => Ok(None),
            }
        };
        let temperature = opt_f64("temperature")?;
        let top_p = opt_f64("top_p")?;
        let tools = match fields.get("tools").filter(|v| !is_null(v)) {
            Some(raw) => parse_tools(raw)?,
            None => Vec::new(),
        };
        let reasoning_effort = match fields.get("reasoning_effort").filter(|v| !is_null(v)) {
            Some(raw) => Some(parse_field(raw, "reasoning_effort", "a string")?),
            None => None,
        };
        let response_format = match fields.get("response_format").filter(|v| !is_null(v)) {
            Some(raw) => {
                let f: ResponseFormatWire<'a> =
                    parse_field(raw, "response_format", "an object with a 'type'")?;
                Some(f.kind)
            }
            None => None,
        };
        let stop = match fields.get("stop").filter(|v| !is_null(v)) {
            Some(raw) if raw.get().starts_with('"') => {
                vec![parse_field(raw, "stop", "a string or an array of strings")?]
            }
            Some(raw) => parse_field(raw, "stop", "a string or an array of strings")?,
            None => Vec::new(),
        };
        let tool_choice = fields.get("tool_choice").filter(|v| !is_null(v));
        let (routing, fusion) = match fields.get("lumina").filter(|v| !is_null(v)) {
            Some(raw) => parse_lumina(raw)?,
            None => (RoutingOptions::default(), None),
        };
        Ok(ChatRequest {
            model,
            stream,
            include_usage,
            max_tokens,
            n,
            messages,
            tools,
            tool_choice,
            reasoning_effort,
            response_format,
            stop,
            temperature,
            top_p,
            routing,
            fusion,
            fields,
        })
    }

    /// Characters of text in the whole conversation.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(Message::text_len).sum()
    }

    /// The body for an OpenAI-compatible upstream: the client's members in order with `model`
    /// replaced, Lumina's own `lumina` member left out and, for streams,
    /// `stream_options.include_usage` forced on.
    pub fn upstream_body(&self, upstream_model: &str) -> Vec<u8> {
        upstream_object(&self.fields, upstream_model, self.stream)
    }
}

/// `fields` for an OpenAI-compatible upstream: in order, `model` replaced, `lumina` left out
/// and, for a `stream`, `stream_options.include_usage` forced on.
pub fn upstream_object(fields: &RawObject<'_>, upstream_model: &str, stream: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        fields
            .0
            .iter()
            .map(|(k, v)| k.as_str().len() + v.get().len() + 4)
            .sum::<usize>()
            + 64,
    );
    out.push(b'{');
    let mut first = true;
    let mut push_member = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(out, key);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    let model_json = json_string(upstream_model);
    let mut wrote_model = false;
    let mut wrote_options = false;
    for (key, value) in &fields.0 {
        match key.as_str() {
            "model" => {
                push_member(&mut out, "model", &model_json);
                wrote_model = true;
            }
            "stream_options" if stream => {
                push_member(
                    &mut out,
                    "stream_options",
                    &stream_options_with_usage(value),
                );
                wrote_options = true;
            }
            // Lumina's own options are for the gateway, not the upstream.
            "lumina" => {}
            k => push_member(&mut out, k, value.get()),
        }
    }
    if !wrote_model {
        push_member(&mut out, "model", &model_json);
    }
    if stream && !wrote_options {
        push_member(&mut out, "stream_options", "{\"include_usage\":true}");
    }
    out.push(b'}');
    out
}

fn stream_options_with_usage(raw: &RawValue) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()) {
        Ok(mut map) => {
            map.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::Value::Object(map).to_string()
        }
        Err(_) => "{\"include_usage\":true}".into(),
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(json_string(s).as_bytes());
    }
}

#[derive(Deserialize)]
struct MessageWire<'a> {
    #[serde(borrow)]
    role: Option<Text<'a>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tool_call_id: Option<Text<'a>>,
}

fn parse_messages(raw: &RawValue) -> Result<Vec<Message<'_>>, InvalidRequest> {
    let items: Vec<&RawValue> = parse_field(raw, "messages", "an array of messages")?;
    if items.is_empty() {
        return Err(invalid(
            "'messages' must contain at least one message.",
            "messages",
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let param = format!("messages[{i}]");
        let wire: MessageWire<'_> = parse_field(item, &param, "an object with a 'role'")?;
        let role = wire.role.ok_or_else(|| {
            invalid(
                format!("Missing required parameter: '{param}.role'."),
                format!("{param}.role"),
            )
        })?;
        if !ROLES.contains(&role.as_str()) {
            return Err(invalid(
                format!(
                    "Invalid value for '{param}.role': '{}'. Supported values are: {}.",
                    role.as_str(),
                    ROLES.join(", ")
                ),
                format!("{param}.role"),
            ));
        }
        let content = match wire.content.filter(|v| !is_null(v)) {
            Some(raw) if raw.get().starts_with('"') => Some(Content::Text(parse_field(
                raw,
                &format!("{param}.content"),
                "a string or an array of content parts",
            )?)),
            Some(raw) => Some(Content::Parts(parse_field(
                raw,
                &format!("{param}.content"),
                "a string or an array of content parts",
            )?)),
            None => None,
        };
        let tool_calls: Vec<ToolCall<'_>> = match wire.tool_calls.filter(|v| !is_null(v)) {
            Some(raw) => parse_field(
                raw,
                &format!("{param}.tool_calls"),
                "an array of tool calls",
            )?,
            None => Vec::new(),
        };
        match role.as_str() {
            "assistant" => {}
            "tool" if wire.tool_call_id.is_none() => {
                return Err(invalid(
                    format!("Missing required parameter: '{param}.tool_call_id'."),
                    format!("{param}.tool_call_id"),
                ));
            }
            _ if content.is_none() => {
                return Err(invalid(
                    format!("Missing required parameter: '{param}.content'."),
                    format!("{param}.content"),
                ));
            }
            _ => {}
        }
        messages.push(Message {
            role,
            content,
            tool_calls,
            tool_call_id: wire.tool_call_id,
        });
    }
    Ok(messages)
}

fn parse_tools(raw: &RawValue) -> Result<Vec<Tool<'_>>, InvalidRequest> {
    let wires: Vec<ToolWire<'_>> = parse_field(raw, "tools", "an array of tools")?;
    let mut tools = Vec::with_capacity(wires.len());
    for (i, w) in wires.into_iter().enumerate() {
        if w.kind.as_str() != "function" {
            continue;
        }
        let f = w.function.ok_or_else(|| {
            invalid(
                format!("Missing required parameter: 'tools[{i}].function'."),
                format!("tools[{i}].function"),
            )
        })?;
        tools.push(Tool {
            name: f.name,
            description: f.description,
            parameters: f.parameters,
        });
    }
    Ok(tools)
}

/// Token counts of one completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt tokens served from cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Reasoning tokens within the completion.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// `usage` as Lumina writes it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageOut {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// Cached prompt tokens.
    pub prompt_tokens_details: PromptDetailsOut,
    /// Reasoning tokens.
    pub completion_tokens_details: CompletionDetailsOut,
}

/// `usage.prompt_tokens_details`
#[derive(Debug, Clone, Serialize)]
pub struct PromptDetailsOut {
    /// Cached prompt tokens.
    pub cached_tokens: u64,
}

/// `usage.completion_tokens_details`
#[derive(Debug, Clone, Serialize)]
pub struct CompletionDetailsOut {
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

impl From<TokenUsage> for UsageOut {
    fn from(u: TokenUsage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: PromptDetailsOut {
                cached_tokens: u.cached_tokens,
            },
            completion_tokens_details: CompletionDetailsOut {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

/// A complete (non-streamed) chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`
    pub id: String,
    /// `chat.completion`
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The model that answered.
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token counts, when the upstream reported them (else Lumina adds its own count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    /// `default`.
    pub service_tier: &'static str,
    /// Backend fingerprint.
    pub system_fingerprint: Option<String>,
}

/// One answer.
#[derive(Debug, Serialize)]
pub struct Choice {
    /// Position among the choices.
    pub index: u32,
    /// The assistant message.
    pub message: AssistantMessage,
    /// Always null: Lumina does not synthesize log-probabilities.
    pub logprobs: Option<()>,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: String,
}

/// The assistant's message in a response.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// `assistant`
    pub role: &'static str,
    /// Text, or null when the answer is only tool calls.
    pub content: Option<String>,
    /// Always null here.
    pub refusal: Option<String>,
    /// Function calls, when any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    /// The text of an Anthropic upstream's thinking, when it thought.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Its thinking and redacted-thinking blocks as Anthropic sent them (signatures included),
    /// for a Messages client to send back unchanged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<serde_json::Value>,
}

/// A function call in a response.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// Call id.
    pub id: String,
    /// `function`
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Name and JSON arguments.
    pub function: FunctionOut,
}

/// A function name and its arguments.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// One streamed chunk.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    /// Same for every chunk of a completion.
    pub id: &'a str,
    /// `chat.completion.chunk`
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The model that answers.
    pub model: &'a str,
    /// Deltas; empty in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Token counts, in the final usage chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    /// `default`.
    pub service_tier: &'static str,
    /// Backend fingerprint.
    pub system_fingerprint: Option<&'a str>,
}

/// One choice's delta.
#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta,
    /// Always null.
    pub logprobs: Option<()>,
    /// Set on the last chunk of the choice.
    pub finish_reason: Option<String>,
}

/// What a chunk adds to the assistant message.
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    /// `assistant`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool call fragments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
    /// A piece of an Anthropic upstream's thinking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// A thinking block's signature (`{"type": "thinking", "thinking": "", "signature"}`), or
    /// a redacted-thinking block, as Anthropic sent it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thinking_blocks: Vec<serde_json::Value>,
}

/// A fragment of a streamed tool call.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta {
    /// Which call of the message.
    pub index: u32,
    /// Call id, on its first fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on its first fragment.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name (first fragment) and a piece of the arguments.
    pub function: FunctionDelta,
}

/// Name and argument text of a tool call fragment.
#[derive(Debug, Serialize)]
pub struct FunctionDelta {
    /// Function name, on the first fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A piece of the JSON arguments.
    pub arguments: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_request_and_keeps_unknown_fields() {
        let body = br#"{"model":"lumina-auto","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi \"there\""},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],"stream":true,"stream_options":{"include_usage":false,"x":1},"max_tokens":50,"max_completion_tokens":40,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto","reasoning_effort":"high","response_format":{"type":"json_schema","json_schema":{}},"stop":"END","vendor_extension":{"a":[1,2]}}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert_eq!(r.model.as_str(), "lumina-auto");
        assert!(r.stream && !r.include_usage);
        assert_eq!(r.max_tokens, Some(40));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.reasoning_effort.as_ref().map(Key::as_str), Some("high"));
        assert_eq!(
            r.response_format.as_ref().map(Key::as_str),
            Some("json_schema")
        );
        assert_eq!(r.stop.len(), 1);
        assert_eq!(r.prompt_chars(), "be brief".len() + "hi \"there\"".len());
        let upstream: serde_json::Value =
            serde_json::from_slice(&r.upstream_body("gpt-x")).unwrap();
        assert_eq!(upstream["model"], "gpt-x");
        assert_eq!(upstream["stream_options"]["include_usage"], true);
        assert_eq!(upstream["stream_options"]["x"], 1);
        assert_eq!(upstream["vendor_extension"]["a"][1], 2);
        assert_eq!(
            upstream["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
    }

    #[test]
    fn streams_always_ask_upstream_for_usage() {
        let r = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#,
        )
        .unwrap();
        let upstream: serde_json::Value = serde_json::from_slice(&r.upstream_body("u")).unwrap();
        assert_eq!(upstream["stream_options"]["include_usage"], true);
        let r = ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
            .unwrap();
        let upstream: serde_json::Value = serde_json::from_slice(&r.upstream_body("u")).unwrap();
        assert!(upstream.get("stream_options").is_none());
    }

    #[test]
    fn bad_requests_name_their_parameter() {
        let cases: [(&[u8], Option<&str>); 12] = [
            (b"{\"model\":\"m\"", None),
            (b"[1]", None),
            (b"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", Some("model")),
            (b"{\"model\":\"m\"}", Some("messages")),
            (b"{\"model\":\"m\",\"messages\":[]}", Some("messages")),
            (b"{\"model\":\"m\",\"messages\":\"hi\"}", Some("messages")),
            (b"{\"model\":7,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", Some("model")),
            (b"{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", Some("messages[0].role")),
            (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", Some("messages[0].content")),
            (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", Some("stream")),
            (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-1}", Some("max_tokens")),
            (b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", None),
        ];
        for (body, param) in cases {
            let err = ChatRequest::parse(body).unwrap_err();
            assert_eq!(
                err.param.as_deref(),
                param,
                "{}: {}",
                String::from_utf8_lossy(body),
                err.message
            );
        }
    }
}
