//! OpenAI's Responses API on the wire, for the `/v1/responses` surface: a request
//! (`instructions`, `input` as a string or items, function tools with their calls and
//! outputs, `tool_choice`, `text.format`, `reasoning.effort`, `max_output_tokens`, sampling,
//! `metadata`, `store`, `previous_response_id`) translated into the OpenAI chat view the
//! engine runs, after the stored conversation it continues; and the engine's chat answer
//! rendered as a response object (`message` and `function_call` output items, `usage` with the
//! charge as `cost`). Parameters the API defines but this gateway cannot honour are refused by
//! name, never dropped silently.

use serde_json::{Map, Value, json};

use crate::wire::{InvalidRequest, TokenUsage, invalid};

/// Accepted and without effect here (caching hints, service tiers, log-probability and
/// stream options, which the gateway's own stream already covers).
const IGNORED: [&str; 7] = [
    "include",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "stream_options",
    "top_logprobs",
];

/// A Responses request, checked and translated.
#[derive(Debug)]
pub struct Parsed {
    /// The model asked for.
    pub model: String,
    /// `stream`.
    pub stream: bool,
    /// `store` (default true): whether the response is kept for retrieval and later turns.
    pub store: bool,
    /// The response this turn continues.
    pub previous_response_id: Option<String>,
    /// `instructions`: a system message for this turn only (not carried to the next).
    pub instructions: Option<String>,
    /// This turn's input, as OpenAI chat messages.
    pub turn: Vec<Value>,
    /// Chat members besides `model`, `messages` and `stream`.
    chat: Map<String, Value>,
    /// The members a response object echoes.
    pub echo: Map<String, Value>,
}

fn bad_type(name: &str, what: &str) -> InvalidRequest {
    invalid(
        format!("Invalid type for '{name}': expected {what}."),
        name.to_string(),
    )
}

fn string_of(v: &Value, name: &str) -> Result<String, InvalidRequest> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad_type(name, "a string"))
}

/// Translates a request body (already checked for duplicate members).
pub fn parse(bytes: &[u8]) -> Result<Parsed, InvalidRequest> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    }
    let members: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| InvalidRequest {
            message: format!("We could not parse the JSON body of your request ({e})."),
            param: None,
        })?;
    let mut parsed = Parsed {
        model: String::new(),
        stream: false,
        store: true,
        previous_response_id: None,
        instructions: None,
        turn: Vec::new(),
        chat: Map::new(),
        echo: Map::new(),
    };
    let mut input = None;
    for (name, value) in members {
        if value.is_null() {
            continue;
        }
        let n = name.as_str();
        match n {
            "model" => parsed.model = string_of(&value, n)?,
            "input" => input = Some(value),
            "instructions" => {
                parsed.instructions = Some(string_of(&value, n)?);
                parsed.echo.insert(name, value);
            }
            "stream" => parsed.stream = value.as_bool().ok_or_else(|| bad_type(n, "a boolean"))?,
            "store" => parsed.store = value.as_bool().ok_or_else(|| bad_type(n, "a boolean"))?,
            "background" => {
                if value.as_bool().ok_or_else(|| bad_type(n, "a boolean"))? {
                    return Err(invalid(
                        "Background responses are not supported by this gateway; stream instead.",
                        n,
                    ));
                }
            }
            "previous_response_id" => {
                parsed.previous_response_id = Some(string_of(&value, n)?);
            }
            "max_output_tokens" => {
                if value.as_u64().is_none_or(|t| t == 0) {
                    return Err(bad_type(n, "a positive integer"));
                }
                parsed.chat.insert("max_tokens".into(), value.clone());
                parsed.echo.insert(name, value);
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return Err(bad_type(n, "a number"));
                }
                parsed.chat.insert(name.clone(), value.clone());
                parsed.echo.insert(name, value);
            }
            "parallel_tool_calls" => {
                if !value.is_boolean() {
                    return Err(bad_type(n, "a boolean"));
                }
                parsed.chat.insert(name.clone(), value.clone());
                parsed.echo.insert(name, value);
            }
            "user" => {
                string_of(&value, n)?;
                parsed.chat.insert(name.clone(), value.clone());
                parsed.echo.insert(name, value);
            }
            "metadata" => {
                check_metadata(&value)?;
                parsed.echo.insert(name, value);
            }
            "tools" => {
                parsed.chat.insert(name.clone(), tools(&value)?);
                parsed.echo.insert(name, value);
            }
            "tool_choice" => {
                parsed.chat.insert(name.clone(), tool_choice(&value)?);
                parsed.echo.insert(name, value);
            }
            "text" => {
                if let Some(format) = text_format(&value)? {
                    parsed.chat.insert("response_format".into(), format);
                }
                parsed.echo.insert(name, value);
            }
            "reasoning" => {
                if let Some(effort) = reasoning_effort(&value)? {
                    parsed.chat.insert("reasoning_effort".into(), json!(effort));
                }
                parsed.echo.insert(name, value);
            }
            "truncation" => {
                if !matches!(value.as_str(), Some("auto" | "disabled")) {
                    return Err(bad_type(n, "'auto' or 'disabled'"));
                }
                parsed.echo.insert(name, value);
            }
            "max_tool_calls" => {
                if value.as_u64().is_none_or(|t| t == 0) {
                    return Err(bad_type(n, "a positive integer"));
                }
                parsed.echo.insert(name, value);
            }
            "lumina" => {
                parsed.chat.insert(name, value);
            }
            "conversation" | "prompt" => {
                return Err(invalid(
                    format!("'{n}' is not supported by this gateway; use previous_response_id."),
                    n,
                ));
            }
            _ if IGNORED.contains(&n) => {}
            _ => {
                return Err(invalid(format!("Unknown parameter: '{n}'."), n));
            }
        }
    }
    if parsed.model.is_empty() {
        return Err(invalid("Missing required parameter: 'model'.", "model"));
    }
    let input = input.ok_or_else(|| invalid("Missing required parameter: 'input'.", "input"))?;
    translate_input(&input, &mut parsed.turn)?;
    if parsed.turn.is_empty() {
        return Err(invalid("'input' must not be empty.", "input"));
    }
    if parsed.stream {
        parsed
            .chat
            .insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(parsed)
}

impl Parsed {
    /// The chat body of this turn after `history` (the stored conversation it continues).
    pub fn chat_body(&self, history: &[Value]) -> Vec<u8> {
        let mut messages = Vec::with_capacity(history.len() + self.turn.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        messages.extend(history.iter().cloned());
        messages.extend(self.turn.iter().cloned());
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("messages".into(), Value::Array(messages));
        if self.stream {
            body.insert("stream".into(), json!(true));
        }
        body.extend(self.chat.clone());
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

fn check_metadata(value: &Value) -> Result<(), InvalidRequest> {
    let map = value
        .as_object()
        .ok_or_else(|| bad_type("metadata", "an object"))?;
    if map.len() > 16 {
        return Err(invalid("'metadata' holds at most 16 pairs.", "metadata"));
    }
    for (k, v) in map {
        if k.chars().count() > 64 || v.as_str().is_none_or(|s| s.chars().count() > 512) {
            return Err(invalid(
                "'metadata' keys are strings of at most 64 characters and values strings of at most 512.",
                format!("metadata.{k}"),
            ));
        }
    }
    Ok(())
}

/// Function tools as chat tools; other tool types are refused.
fn tools(value: &Value) -> Result<Value, InvalidRequest> {
    let list = value
        .as_array()
        .ok_or_else(|| bad_type("tools", "an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        match t["type"].as_str() {
            Some("function") => {}
            Some(kind) => {
                return Err(invalid(
                    format!(
                        "Tools of type '{kind}' are not supported by this gateway; declare function tools."
                    ),
                    format!("tools[{i}].type"),
                ));
            }
            None => return Err(bad_type(&format!("tools[{i}].type"), "a string")),
        }
        let name = t["name"]
            .as_str()
            .ok_or_else(|| invalid("A function tool needs a name.", format!("tools[{i}].name")))?;
        let mut function = Map::new();
        function.insert("name".into(), json!(name));
        for member in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(member).filter(|v| !v.is_null()) {
                function.insert(member.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn tool_choice(value: &Value) -> Result<Value, InvalidRequest> {
    match value {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(value.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    "tool_choice of type function needs a name.",
                    "tool_choice.name",
                )
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(bad_type(
            "tool_choice",
            "'auto', 'none', 'required' or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// The chat `response_format` of `text.format`, `None` for plain text.
fn text_format(value: &Value) -> Result<Option<Value>, InvalidRequest> {
    let text = value
        .as_object()
        .ok_or_else(|| bad_type("text", "an object"))?;
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let name = format["name"]
                .as_str()
                .ok_or_else(|| invalid("A json_schema format needs a name.", "text.format.name"))?;
            if !format["schema"].is_object() {
                return Err(bad_type("text.format.schema", "an object"));
            }
            let mut schema = Map::new();
            schema.insert("name".into(), json!(name));
            for member in ["schema", "strict", "description"] {
                if let Some(v) = format.get(member).filter(|v| !v.is_null()) {
                    schema.insert(member.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad_type(
            "text.format.type",
            "'text', 'json_object' or 'json_schema'",
        )),
    }
}

fn reasoning_effort(value: &Value) -> Result<Option<String>, InvalidRequest> {
    let reasoning = value
        .as_object()
        .ok_or_else(|| bad_type("reasoning", "an object"))?;
    match reasoning.get("effort") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(e))
            if matches!(
                e.as_str(),
                "none" | "minimal" | "low" | "medium" | "high" | "xhigh"
            ) =>
        {
            Ok(Some(e.clone()))
        }
        Some(_) => Err(bad_type(
            "reasoning.effort",
            "'none', 'minimal', 'low', 'medium', 'high' or 'xhigh'",
        )),
    }
}

/// The text of a content list's text parts (`input_text`, `output_text`).
fn joined_text(parts: &[Value], param: &str) -> Result<String, InvalidRequest> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p["type"].as_str(), p["text"].as_str()) {
            (Some("input_text" | "output_text"), Some(t)) => text.push_str(t),
            (Some("refusal"), _) => {}
            _ => {
                return Err(invalid(
                    "Expected a text part (input_text or output_text) here.",
                    format!("{param}.content[{j}]"),
                ));
            }
        }
    }
    Ok(text)
}

/// A user message's content parts as chat parts.
fn user_parts(parts: &[Value], param: &str) -> Result<Vec<Value>, InvalidRequest> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let part = format!("{param}.content[{j}]");
            match p["type"].as_str() {
                Some("input_text") => match p["text"].as_str() {
                    Some(t) => Ok(json!({"type": "text", "text": t})),
                    None => Err(bad_type(&format!("{part}.text"), "a string")),
                },
                Some("input_image") => {
                    let url = p["image_url"].as_str().ok_or_else(|| {
                        invalid(
                            "input_image needs an image_url (file ids are not supported by this gateway).",
                            format!("{part}.image_url"),
                        )
                    })?;
                    let mut image = json!({"url": url});
                    if let Some(detail) = p["detail"].as_str() {
                        image["detail"] = json!(detail);
                    }
                    Ok(json!({"type": "image_url", "image_url": image}))
                }
                Some(kind) => Err(invalid(
                    format!("Content parts of type '{kind}' are not supported in a user message."),
                    format!("{part}.type"),
                )),
                None => Err(bad_type(&format!("{part}.type"), "a string")),
            }
        })
        .collect()
}

/// One message item as a chat message.
fn message_item(item: &Value, param: &str) -> Result<Value, InvalidRequest> {
    let role = match item["role"].as_str() {
        Some(r @ ("user" | "assistant" | "system")) => r,
        Some("developer") => "system",
        Some(other) => {
            return Err(invalid(
                format!("Invalid role '{other}': expected user, assistant, system or developer."),
                format!("{param}.role"),
            ));
        }
        None => return Err(invalid("A message needs a role.", format!("{param}.role"))),
    };
    match &item["content"] {
        Value::String(s) => Ok(json!({"role": role, "content": s})),
        Value::Array(parts) if role == "user" => {
            Ok(json!({"role": role, "content": user_parts(parts, param)?}))
        }
        Value::Array(parts) => Ok(json!({"role": role, "content": joined_text(parts, param)?})),
        _ => Err(bad_type(
            &format!("{param}.content"),
            "a string or an array of content parts",
        )),
    }
}

/// `input` as chat messages: a string is one user message; items are messages, function
/// calls (merged into the assistant message before them) and their outputs (tool messages).
/// Reasoning items are dropped: their encrypted content is for the model that wrote them.
fn translate_input(input: &Value, out: &mut Vec<Value>) -> Result<(), InvalidRequest> {
    let items = match input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(bad_type("input", "a string or an array of items")),
    };
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = match item["type"].as_str() {
            Some(k) => k,
            None if item.get("role").is_some() => "message",
            None => return Err(bad_type(&format!("{param}.type"), "a string")),
        };
        match kind {
            "message" => out.push(message_item(item, &param)?),
            "function_call" => {
                let (Some(call_id), Some(name), Some(arguments)) = (
                    item["call_id"].as_str(),
                    item["name"].as_str(),
                    item["arguments"].as_str(),
                ) else {
                    return Err(invalid(
                        "A function_call item needs call_id, name and arguments (strings).",
                        param,
                    ));
                };
                let call = json!({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    Some(Value::Object(last)) if last.get("role") == Some(&json!("assistant")) => {
                        match last.get_mut("tool_calls") {
                            Some(Value::Array(calls)) => calls.push(call),
                            _ => {
                                last.insert("tool_calls".into(), json!([call]));
                            }
                        }
                    }
                    _ => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let call_id = item["call_id"].as_str().ok_or_else(|| {
                    invalid(
                        "A function_call_output item needs a call_id.",
                        format!("{param}.call_id"),
                    )
                })?;
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => joined_text(parts, &param)?,
                    _ => return Err(bad_type(&format!("{param}.output"), "a string")),
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            "reasoning" => {}
            "item_reference" => {
                return Err(invalid(
                    "Item references are not supported by this gateway: pass previous_response_id or the items themselves.",
                    format!("{param}.type"),
                ));
            }
            other => {
                return Err(invalid(
                    format!("Input items of type '{other}' are not supported by this gateway."),
                    format!("{param}.type"),
                ));
            }
        }
    }
    Ok(())
}

/// The ids of a response's parts, all derived from its request's id.
#[derive(Debug, Clone)]
pub struct Ids {
    /// `resp_…`.
    pub response: String,
    /// `msg_…`, the message output item.
    pub message: String,
    suffix: String,
}

impl Ids {
    /// The ids of request `request_id`'s response.
    pub fn of(request_id: &str) -> Ids {
        let suffix = request_id.trim_start_matches("req_").to_string();
        Ids {
            response: format!("resp_{suffix}"),
            message: format!("msg_{suffix}"),
            suffix,
        }
    }

    /// `fc_…` of the `n`th function call.
    pub fn function_call(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.suffix)
    }
}

/// A message output item with its text.
pub fn message_output(id: &str, status: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// A function call output item.
pub fn function_call_output(
    id: &str,
    status: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "status": status, "call_id": call_id,
        "name": name, "arguments": arguments})
}

/// The answer of one turn: its output items and the assistant message it adds to the
/// conversation.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// The message's text (empty when the model only called functions).
    pub text: String,
    /// Function calls: (call id, name, arguments).
    pub calls: Vec<(String, String, String)>,
}

impl Output {
    /// The output of a chat completion (its first choice).
    pub fn of_completion(completion: &Value) -> Output {
        let message = &completion["choices"][0]["message"];
        let text = message["content"].as_str().unwrap_or_default().to_string();
        let calls = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&c["id"]),
                    s(&c["function"]["name"]),
                    s(&c["function"]["arguments"]),
                )
            })
            .collect();
        Output { text, calls }
    }

    /// Its output items, `status` each.
    pub fn items(&self, ids: &Ids, status: &str) -> Vec<Value> {
        let mut items = Vec::with_capacity(self.calls.len() + 1);
        if !self.text.is_empty() || self.calls.is_empty() {
            items.push(message_output(&ids.message, status, &self.text));
        }
        for (n, (call_id, name, arguments)) in self.calls.iter().enumerate() {
            items.push(function_call_output(
                &ids.function_call(n),
                status,
                call_id,
                name,
                arguments,
            ));
        }
        items
    }

    /// The assistant chat message a later turn sees.
    pub fn chat_message(&self) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), json!("assistant"));
        m.insert(
            "content".into(),
            if self.text.is_empty() && !self.calls.is_empty() {
                Value::Null
            } else {
                json!(self.text)
            },
        );
        if !self.calls.is_empty() {
            let calls: Vec<Value> = self
                .calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        Value::Object(m)
    }
}

/// Responses' `usage` for billed `usage`, with the charge as `cost` (credits, exact text).
pub fn usage_json(usage: TokenUsage, cost: &str) -> String {
    format!(
        r#"{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":{}}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":{}}},"total_tokens":{},"cost":{}}}"#,
        usage.prompt_tokens,
        usage.cached_tokens.min(usage.prompt_tokens),
        usage.completion_tokens,
        usage.reasoning_tokens.min(usage.completion_tokens),
        usage.prompt_tokens.saturating_add(usage.completion_tokens),
        cost
    )
}

/// What a response object says besides its output and usage.
pub struct Head<'a> {
    /// Its ids.
    pub ids: &'a Ids,
    /// Unix seconds.
    pub created_at: i64,
    /// `in_progress`, `completed`, `failed`, `cancelled`.
    pub status: &'a str,
    /// The model that answered (or was asked for).
    pub model: &'a str,
    /// The request.
    pub parsed: &'a Parsed,
    /// `error` of a failed response.
    pub error: Option<Value>,
    /// Lumina's report on the answer (a Fusion request's `lumina` object, JSON text).
    pub report: Option<String>,
}

/// A response object (JSON text); `usage` is [`usage_json`]'s text, spliced in as is so the
/// cost stays exact.
pub fn response_json(head: &Head<'_>, output: Vec<Value>, usage: Option<&str>) -> String {
    let echo = &head.parsed.echo;
    let get = |name: &str, default: Value| echo.get(name).cloned().unwrap_or(default);
    let object = json!({
        "id": head.ids.response,
        "object": "response",
        "created_at": head.created_at,
        "status": head.status,
        "error": head.error,
        "incomplete_details": null,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "max_tool_calls": get("max_tool_calls", Value::Null),
        "model": head.model,
        "output": output,
        "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
        "previous_response_id": head.parsed.previous_response_id,
        "reasoning": get("reasoning", json!({"effort": null, "summary": null})),
        "store": head.parsed.store,
        "temperature": get("temperature", json!(1.0)),
        "text": get("text", json!({"format": {"type": "text"}})),
        "tool_choice": get("tool_choice", json!("auto")),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", json!(1.0)),
        "truncation": get("truncation", json!("disabled")),
        "user": get("user", Value::Null),
        "metadata": get("metadata", json!({})),
    });
    let mut out = object.to_string();
    out.pop();
    out.push_str(r#","usage":"#);
    out.push_str(usage.unwrap_or("null"));
    if let Some(report) = &head.report {
        out.push_str(r#","lumina":"#);
        out.push_str(report);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str, history: &[Value]) -> Value {
        let parsed = parse(body.as_bytes()).unwrap();
        serde_json::from_slice(&parsed.chat_body(history)).unwrap()
    }

    #[test]
    fn a_full_request_becomes_the_chat_view_after_its_history() {
        let history = vec![
            json!({"role": "user", "content": "earlier"}),
            json!({"role": "assistant", "content": "answer"}),
        ];
        let v = chat(
            r#"{"model":"lumina-auto","instructions":"be brief","stream":true,"max_output_tokens":64,
            "input":[{"role":"developer","content":"house rules"},
              {"type":"message","role":"user","content":[{"type":"input_text","text":"weather?"},{"type":"input_image","image_url":"data:image/png;base64,AAAA","detail":"low"}]},
              {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Checking."}]},
              {"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
              {"type":"function_call","call_id":"call_2","name":"get_time","arguments":"{}"},
              {"type":"reasoning","id":"rs_1","summary":[]},
              {"type":"function_call_output","call_id":"call_1","output":"sunny"},
              {"type":"function_call_output","call_id":"call_2","output":[{"type":"input_text","text":"noon"}]}],
            "tools":[{"type":"function","name":"get_weather","description":"w","parameters":{"type":"object"},"strict":true}],
            "tool_choice":{"type":"function","name":"get_weather"},"parallel_tool_calls":false,
            "text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"},"strict":true}},
            "reasoning":{"effort":"high"},"temperature":0.2,"top_p":0.9,"user":"u-1","metadata":{"k":"v"},
            "store":false,"include":["reasoning.encrypted_content"],"lumina":{"routing":{"prefer":"cost"}}}"#,
            &history,
        );
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1], history[0]);
        assert_eq!(m[2], history[1]);
        assert_eq!(m[3], json!({"role": "system", "content": "house rules"}));
        assert_eq!(m[4]["content"][1]["image_url"]["detail"], "low");
        assert_eq!(m[5]["content"], "Checking.");
        assert_eq!(m[5]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(m[5]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m[6],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(m[7]["content"], "noon");
        assert_eq!(m.len(), 8);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["tools"][0]["function"]["strict"], true);
        assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["response_format"]["json_schema"]["name"], "w");
        assert_eq!(v["reasoning_effort"], "high");
        assert_eq!(v["user"], "u-1");
        assert_eq!(v["lumina"]["routing"]["prefer"], "cost");
        assert!(v.get("metadata").is_none() && v.get("include").is_none());
        let parsed = parse(br#"{"model":"m","input":"hi","store":false}"#).unwrap();
        assert!(!parsed.store && parsed.turn.len() == 1);
    }

    #[test]
    fn bad_requests_name_their_parameter() {
        for (body, param) in [
            (r#"{"input":"x"}"#, "model"),
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":5}"#, "input"),
            (r#"{"model":7,"input":"x"}"#, "model"),
            (r#"{"model":"m","input":"x","stream":"yes"}"#, "stream"),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"x","temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"model":"m","input":"x","tool_choice":"sometimes"}"#,
                "tool_choice",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"yaml"}}}"#,
                "text.format.type",
            ),
            (
                r#"{"model":"m","input":"x","reasoning":{"effort":"max"}}"#,
                "reasoning.effort",
            ),
            (
                r#"{"model":"m","input":"x","metadata":{"k":1}}"#,
                "metadata.k",
            ),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "background",
            ),
            (r#"{"model":"m","input":"x","frobnicate":1}"#, "frobnicate"),
            (
                r#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#,
                "input[0].type",
            ),
            (
                r#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#,
                "input[0]",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"f"}]}]}"#,
                "input[0].content[0].type",
            ),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        assert!(parse(b"[1]").unwrap_err().param.is_none());
        assert!(parse(b"{").unwrap_err().param.is_none());
    }

    #[test]
    fn an_answer_becomes_output_items_usage_and_the_next_turns_message() {
        let completion = json!({"choices": [{"message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "finish_reason": "tool_calls"}]});
        let out = Output::of_completion(&completion);
        let ids = Ids::of("req_abc");
        let items = out.items(&ids, "completed");
        assert_eq!(items[0]["id"], "msg_abc");
        assert_eq!(items[0]["content"][0]["text"], "Hi");
        assert_eq!(items[1]["type"], "function_call");
        assert_eq!(items[1]["call_id"], "call_9");
        assert_eq!(items[1]["id"], "fc_abc_0");
        assert_eq!(out.chat_message()["tool_calls"][0]["id"], "call_9");
        let usage = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 4,
            cached_tokens: 3,
            reasoning_tokens: 1,
        };
        let parsed = parse(br#"{"model":"m","input":"x","metadata":{"k":"v"}}"#).unwrap();
        let head = Head {
            ids: &ids,
            created_at: 1,
            status: "completed",
            model: "m-up",
            parsed: &parsed,
            error: None,
            report: None,
        };
        let text = response_json(&head, items, Some(&usage_json(usage, "0.000012")));
        assert!(text.contains(r#""cost":0.000012"#), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "resp_abc");
        assert_eq!(v["usage"]["total_tokens"], 14);
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 3);
        assert_eq!(v["metadata"]["k"], "v");
        assert_eq!(v["store"], true);
        let calls_only = Output {
            text: String::new(),
            calls: vec![("c".into(), "f".into(), "{}".into())],
        };
        assert_eq!(calls_only.items(&ids, "completed").len(), 1);
        assert!(calls_only.chat_message()["content"].is_null());
    }
}
