//! Anthropic's Messages API on the wire, for the `/v1/messages` surface: a request translated
//! into the OpenAI chat view the engine runs (system prompt, text and image blocks, tools,
//! `tool_use` and `tool_result`, `tool_choice`, stop sequences, sampling, `metadata.user_id`,
//! extended thinking as a reasoning effort), and the engine's OpenAI-shaped answer translated
//! back into a Messages response, thinking blocks first. The `thinking` setting and the
//! thinking blocks of earlier assistant turns are kept aside, unchanged, for an Anthropic
//! upstream (`AnthropicNative`); any other upstream never sees them.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::wire::{InvalidRequest, TokenUsage};

fn invalid(message: impl Into<String>, param: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param.into()),
    }
}

/// A Messages request, as far as the translation reads it.
#[derive(Deserialize)]
struct MessagesRequest {
    model: Value,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    messages: Option<Value>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    thinking: Option<Value>,
}

/// A Messages request translated for the engine.
#[derive(Debug)]
pub struct Translated {
    /// The OpenAI chat body (JSON) the engine parses and an OpenAI-compatible upstream gets.
    pub body: Vec<u8>,
    /// The model the client asked for, echoed in the answer.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// `thinking`, as sent.
    pub thinking: Option<Value>,
    /// The thinking blocks of earlier assistant turns, unchanged, by the index of the chat
    /// message they lead.
    pub thinking_blocks: Vec<(usize, Vec<Value>)>,
}

/// The text of a `system` value (a string or text blocks).
fn system_text(system: &Value) -> Result<String, InvalidRequest> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b["type"].as_str(), b["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push(t),
                    _ => {
                        return Err(invalid(
                            "system blocks must be text blocks",
                            format!("system[{i}]"),
                        ));
                    }
                }
            }
            Ok(out.join("\n\n"))
        }
        _ => Err(invalid(
            "system must be a string or an array of text blocks",
            "system",
        )),
    }
}

/// An image block as an OpenAI `image_url` part.
fn image_part(block: &Value, param: &str) -> Result<Value, InvalidRequest> {
    let source = &block["source"];
    let url = match source["type"].as_str() {
        Some("base64") => match (source["media_type"].as_str(), source["data"].as_str()) {
            (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
            _ => {
                return Err(invalid(
                    "a base64 image needs media_type and data",
                    format!("{param}.source"),
                ));
            }
        },
        Some("url") => match source["url"].as_str() {
            Some(u) => u.to_string(),
            None => {
                return Err(invalid(
                    "a url image needs a url",
                    format!("{param}.source"),
                ));
            }
        },
        _ => {
            return Err(invalid(
                "image source type must be base64 or url",
                format!("{param}.source.type"),
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The text of a `tool_result`'s content (a string or text blocks).
fn tool_result_text(content: &Value, param: &str) -> Result<String, InvalidRequest> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => Ok(blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .map(|b| b["text"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")),
        _ => Err(invalid(
            "tool_result content must be a string or blocks",
            format!("{param}.content"),
        )),
    }
}

/// Translates one Messages message into OpenAI chat messages (a user turn with tool results
/// becomes the tool messages followed by the rest of the turn).
fn translate_message(
    m: &Value,
    i: usize,
    out: &mut Vec<Value>,
    thinking_blocks: &mut Vec<(usize, Vec<Value>)>,
) -> Result<(), InvalidRequest> {
    let param = format!("messages[{i}]");
    let role = match m["role"].as_str() {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(invalid(
                format!("Invalid role '{other}': expected user or assistant"),
                format!("{param}.role"),
            ));
        }
        None => return Err(invalid("Missing role", format!("{param}.role"))),
    };
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(
                "content must be a string or an array of blocks",
                format!("{param}.content"),
            ));
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut text = String::new();
    let mut tool_calls: Vec<Value> = Vec::new();
    let mut thinking: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bparam = format!("{param}.content[{j}]");
        match b["type"].as_str() {
            Some("text") => {
                let t = b["text"]
                    .as_str()
                    .ok_or_else(|| invalid("a text block needs text", format!("{bparam}.text")))?;
                if role == "assistant" {
                    text.push_str(t);
                } else {
                    parts.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image") if role == "user" => parts.push(image_part(b, &bparam)?),
            Some("tool_use") if role == "assistant" => {
                let (Some(id), Some(name)) = (b["id"].as_str(), b["name"].as_str()) else {
                    return Err(invalid("a tool_use block needs id and name", bparam));
                };
                let input = if b["input"].is_null() {
                    json!({})
                } else {
                    b["input"].clone()
                };
                tool_calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            Some("tool_result") if role == "user" => {
                let id = b["tool_use_id"].as_str().ok_or_else(|| {
                    invalid(
                        "a tool_result block needs tool_use_id",
                        format!("{bparam}.tool_use_id"),
                    )
                })?;
                let mut content = tool_result_text(&b["content"], &bparam)?;
                if b["is_error"] == true {
                    content = format!("Error: {content}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Some("thinking" | "redacted_thinking") if role == "assistant" => {
                thinking.push(b.clone());
            }
            Some(kind) => {
                return Err(invalid(
                    format!("'{kind}' blocks are not supported in a {role} message"),
                    format!("{bparam}.type"),
                ));
            }
            None => return Err(invalid("a block needs a type", format!("{bparam}.type"))),
        }
    }
    if role == "assistant" {
        let mut msg = Map::new();
        msg.insert("role".into(), json!("assistant"));
        msg.insert(
            "content".into(),
            if text.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            },
        );
        if !tool_calls.is_empty() {
            msg.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        if !thinking.is_empty() {
            thinking_blocks.push((out.len(), thinking));
        }
        out.push(Value::Object(msg));
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn translate_tools(tools: &Value) -> Result<Vec<Value>, InvalidRequest> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("tools must be an array", "tools"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t["name"]
                .as_str()
                .ok_or_else(|| invalid("a tool needs a name", format!("tools[{i}].name")))?;
            if let Some(kind) = t["type"].as_str()
                && kind != "custom"
            {
                return Err(invalid(
                    format!("server tool '{kind}' is not supported by this gateway"),
                    format!("tools[{i}].type"),
                ));
            }
            let schema = if t["input_schema"].is_null() {
                json!({"type": "object", "properties": {}})
            } else {
                t["input_schema"].clone()
            };
            let mut function = json!({"name": name, "parameters": schema});
            if let Some(d) = t["description"].as_str() {
                function["description"] = json!(d);
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn translate_tool_choice(
    choice: &Value,
    body: &mut Map<String, Value>,
) -> Result<(), InvalidRequest> {
    let mapped = match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(invalid(
                    "tool_choice of type tool needs a name",
                    "tool_choice.name",
                ));
            }
        },
        _ => {
            return Err(invalid(
                "tool_choice.type must be auto, any, tool or none",
                "tool_choice.type",
            ));
        }
    };
    body.insert("tool_choice".into(), mapped);
    if choice["disable_parallel_tool_use"] == true {
        body.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}

/// The reasoning effort an extended-thinking budget asks for.
fn effort_of(thinking: &Value) -> Result<Option<&'static str>, InvalidRequest> {
    if thinking.is_null() {
        return Ok(None);
    }
    match thinking["type"].as_str() {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            let budget = thinking["budget_tokens"].as_u64().ok_or_else(|| {
                invalid(
                    "thinking.budget_tokens must be a positive integer",
                    "thinking.budget_tokens",
                )
            })?;
            Ok(Some(match budget {
                0..=4_096 => "low",
                4_097..=16_384 => "medium",
                _ => "high",
            }))
        }
        _ => Err(invalid(
            "thinking.type must be enabled or disabled",
            "thinking.type",
        )),
    }
}

/// Translates a Messages request body (already checked for duplicate members) into the
/// OpenAI chat body the engine runs. `count_only` accepts a body without `max_tokens` (for
/// `count_tokens`).
pub fn translate_request(bytes: &[u8], count_only: bool) -> Result<Translated, InvalidRequest> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    }
    let req: MessagesRequest = serde_json::from_slice(bytes).map_err(|e| InvalidRequest {
        message: format!("We could not parse the JSON body of your request ({e})."),
        param: None,
    })?;
    let model = req
        .model
        .as_str()
        .ok_or_else(|| invalid("model must be a string", "model"))?
        .to_string();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    match (&req.max_tokens, count_only) {
        (Some(Value::Number(n)), _) if n.as_u64().is_some_and(|n| n > 0) => {
            body.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        (None, true) => {}
        (None, false) => return Err(invalid("max_tokens: Field required", "max_tokens")),
        _ => {
            return Err(invalid(
                "max_tokens must be a positive integer",
                "max_tokens",
            ));
        }
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(system) = req.system.as_ref().filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": system_text(system)?}));
    }
    let list = req
        .messages
        .as_ref()
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages: Field required (an array)", "messages"))?;
    if list.is_empty() {
        return Err(invalid("messages must not be empty", "messages"));
    }
    let mut thinking_blocks = Vec::new();
    for (i, m) in list.iter().enumerate() {
        translate_message(m, i, &mut messages, &mut thinking_blocks)?;
    }
    body.insert("messages".into(), Value::Array(messages));
    let stream = match &req.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream must be a boolean", "stream")),
    };
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(stop) = req.stop_sequences.filter(|v| !v.is_null()) {
        if !stop
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(invalid(
                "stop_sequences must be an array of strings",
                "stop_sequences",
            ));
        }
        body.insert("stop".into(), stop);
    }
    for (name, value) in [("temperature", req.temperature), ("top_p", req.top_p)] {
        match value {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                body.insert(name.into(), v);
            }
            Some(_) => return Err(invalid(format!("{name} must be a number"), name)),
        }
    }
    if let Some(user) = req.metadata.as_ref().and_then(|m| m["user_id"].as_str()) {
        body.insert("user".into(), json!(user));
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_null()) {
        body.insert("tools".into(), Value::Array(translate_tools(tools)?));
    }
    if let Some(choice) = req.tool_choice.as_ref().filter(|c| !c.is_null()) {
        translate_tool_choice(choice, &mut body)?;
    }
    let thinking = req.thinking.filter(|t| !t.is_null());
    if let Some(thinking) = thinking.as_ref()
        && let Some(effort) = effort_of(thinking)?
    {
        body.insert("reasoning_effort".into(), json!(effort));
    }
    let body = serde_json::to_vec(&Value::Object(body)).map_err(|e| InvalidRequest {
        message: format!("The request could not be translated: {e}"),
        param: None,
    })?;
    Ok(Translated {
        body,
        model,
        stream,
        thinking,
        thinking_blocks,
    })
}

/// Anthropic's stop reason for an OpenAI finish reason.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` for billed `usage`, with the charge as `cost` (credits, exact text).
pub fn usage_json(usage: TokenUsage, cost: &str) -> String {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    format!(
        r#"{{"input_tokens":{},"output_tokens":{},"cache_creation_input_tokens":0,"cache_read_input_tokens":{},"cost":{}}}"#,
        usage.prompt_tokens - cached,
        usage.completion_tokens,
        cached,
        cost
    )
}

/// The Messages response for an OpenAI `chat.completion` body (its `lumina` report, a Fusion
/// request's, carried over as is).
pub fn translate_response(
    completion: &[u8],
    id: &str,
    model: &str,
    usage: TokenUsage,
    cost: &str,
) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(completion).map_err(|e| e.to_string())?;
    let choice = &v["choices"][0];
    let message = &choice["message"];
    let mut content: Vec<Value> = message["thinking_blocks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let args = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    let head = json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()), "stop_sequence": null,
    });
    let mut out = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
    out.pop();
    out.extend_from_slice(br#","usage":"#);
    out.extend_from_slice(usage_json(usage, cost).as_bytes());
    if let Some(report) = v.get("lumina") {
        out.extend_from_slice(br#","lumina":"#);
        out.extend_from_slice(&serde_json::to_vec(report).map_err(|e| e.to_string())?);
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(body: &str) -> Value {
        serde_json::from_slice(&translate_request(body.as_bytes(), false).unwrap().body).unwrap()
    }

    #[test]
    fn a_full_request_becomes_the_openai_view() {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":256,"system":[{"type":"text","text":"be brief"}],
            "messages":[{"role":"user","content":[{"type":"text","text":"weather?"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]},
            {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"sunny"},{"type":"text","text":"thanks"}]}],
            "tools":[{"name":"get_weather","description":"w","input_schema":{"type":"object"}}],
            "tool_choice":{"type":"any","disable_parallel_tool_use":true},"stop_sequences":["END"],"temperature":0.2,
            "metadata":{"user_id":"u-1"},"stream":true,"thinking":{"type":"enabled","budget_tokens":10000}}"#;
        let v = translated(body);
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert_eq!(v["max_tokens"], 256);
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            v["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(v["messages"][2]["content"], "Checking.");
        assert_eq!(
            v["messages"][2]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            v["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
        );
        assert_eq!(v["messages"][4]["content"][0]["text"], "thanks");
        assert_eq!(v["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["stop"][0], "END");
        assert_eq!(v["user"], "u-1");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["reasoning_effort"], "medium");
        // The thinking setting and the earlier turn's thinking block are kept aside unchanged,
        // the block by the index of the chat message it leads (the assistant's, after system
        // and user).
        let t = translate_request(body.as_bytes(), false).unwrap();
        assert_eq!(
            t.thinking,
            Some(json!({"type": "enabled", "budget_tokens": 10000}))
        );
        assert_eq!(
            t.thinking_blocks,
            [(
                2,
                vec![json!({"type": "thinking", "thinking": "hmm", "signature": "sig"})]
            )]
        );
        assert!(!String::from_utf8_lossy(&t.body).contains("sig"));
    }

    #[test]
    fn bad_requests_name_their_parameter() {
        for (body, param) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (r#"{"model":"m","max_tokens":1}"#, "messages"),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"video"}]}]}"#,
                "messages[0].content[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":-1,"messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":1,"stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
                "stream",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tool_choice":{"type":"maybe"},"messages":[{"role":"user","content":"x"}]}"#,
                "tool_choice.type",
            ),
        ] {
            let e = translate_request(body.as_bytes(), false).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        assert!(
            translate_request(b"[1]", false)
                .unwrap_err()
                .param
                .is_none()
        );
        assert!(
            translate_request(
                br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn an_answer_becomes_a_messages_response() {
        let completion = br#"{"choices":[{"message":{"role":"assistant","content":"Hi","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}]}"#;
        let usage = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 4,
            cached_tokens: 3,
            reasoning_tokens: 0,
        };
        let out = translate_response(completion, "msg_1", "claude-x", usage, "0.000012").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0], json!({"type": "text", "text": "Hi"}));
        assert_eq!(v["content"][1]["input"]["a"], 1);
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"]["input_tokens"], 7);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 3);
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#""cost":0.000012"#)
        );
    }
}
