//! Labelled routing items (`datasets/routing/README.md`): one JSON object per line with the
//! OpenAI `messages` (and optional `tools`, `response_format`, `reasoning_effort`) of a request
//! and the path it needs. Each item becomes the chat request body a client would send, so
//! training and evaluation see a request exactly as the gateway does.

use serde::Deserialize;
use serde_json::Value;

use crate::routing::catalog::RoutePath;
use crate::wire::ChatRequest;

/// One labelled request.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledItem {
    /// The item's id.
    pub id: String,
    /// The chat completion request body, `model` `lumina-auto`.
    pub body: String,
    /// The labelled path.
    pub path: RoutePath,
}

impl LabelledItem {
    /// The request, parsed as the gateway parses it.
    pub fn request(&self) -> Result<ChatRequest<'_>, DatasetError> {
        ChatRequest::parse(self.body.as_bytes()).map_err(|e| DatasetError {
            line: 0,
            message: format!("{}: {}", self.id, e.message),
        })
    }
}

/// A line that is not a labelled item.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DatasetError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

#[derive(Deserialize)]
struct Line {
    id: String,
    messages: Vec<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    path: String,
}

/// A path's name as labelled (`fast`, `balanced`, `reasoning`).
pub fn parse_path(name: &str) -> Option<RoutePath> {
    match name {
        "fast" => Some(RoutePath::Fast),
        "balanced" => Some(RoutePath::Balanced),
        "reasoning" => Some(RoutePath::Reasoning),
        _ => None,
    }
}

/// Parses a JSONL dataset; blank lines are skipped, any other bad line is an error naming it.
pub fn parse_items(text: &str) -> Result<Vec<LabelledItem>, DatasetError> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let err = |message: String| DatasetError { line, message };
        let l: Line = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        let path = parse_path(&l.path).ok_or_else(|| {
            err(format!(
                "path: expected fast, balanced or reasoning, got '{}'",
                l.path
            ))
        })?;
        let mut body = serde_json::json!({"model": "lumina-auto", "messages": l.messages});
        if let Some(tools) = l.tools {
            body["tools"] = Value::Array(tools);
        }
        if let Some(format) = l.response_format {
            body["response_format"] = format;
        }
        if let Some(effort) = l.reasoning_effort {
            body["reasoning_effort"] = Value::String(effort);
        }
        let item = LabelledItem {
            id: l.id,
            body: body.to_string(),
            path,
        };
        item.request().map_err(|e| err(e.message))?;
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_becomes_the_request_a_client_would_send() {
        let text = concat!(
            r#"{"id":"a","messages":[{"role":"user","content":"hi"}],"path":"fast","lang":"en"}"#,
            "\n\n",
            r#"{"id":"b","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f"}}],"path":"reasoning"}"#,
        );
        let items = parse_items(text).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].path, RoutePath::Fast);
        let r = items[1].request().unwrap();
        assert_eq!(r.tools.len(), 1);
        assert_eq!(
            r.response_format.as_ref().map(|f| f.as_str()),
            Some("json_object")
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"id\":\"a\",\"messages\":[],\"path\":\"fast\"}\n{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"path\":\"slow\"}";
        let err = parse_items(text).unwrap_err();
        assert_eq!(err.line, 1, "{err}");
        let err = parse_items(text.lines().nth(1).unwrap()).unwrap_err();
        assert!(err.message.contains("slow"), "{err}");
    }
}
