//! Eval datasets (`datasets/evals/README.md`, `schemas/eval/item.v1.schema.json`): JSON Lines,
//! one item a line — an id, the conversation to send, an optional task class and the check
//! that scores the answer. Every line is parsed and every check compiled (regular
//! expressions, JSON Schemas) before anything is sent, and a bad line is an error naming its
//! line number.

use std::collections::HashSet;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::eval_run::check::Check;

/// Most items in a dataset.
const MAX_ITEMS: usize = 100_000;
/// Longest item id or task class, in characters (the gateway's bound).
const MAX_NAME_CHARS: usize = 256;

/// One item, ready to send and score.
#[derive(Debug)]
pub struct Item {
    /// The item's id, unique in its dataset.
    pub id: String,
    /// OpenAI chat messages.
    pub messages: Vec<Value>,
    /// The item's task class, if the dataset gives one.
    pub task_class: Option<String>,
    /// `max_tokens` to send, if any.
    pub max_tokens: Option<u32>,
    /// `response_format` to send, if any.
    pub response_format: Option<Value>,
    /// How the answer is scored.
    pub check: Check,
}

/// A line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    task_class: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    response_format: Option<Value>,
    check: Value,
}

/// Parses a whole dataset; blank lines are skipped.
pub fn parse(text: &str) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut ids = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = n + 1;
        let item = parse_line(line).map_err(|e| anyhow!("line {number}: {e:#}"))?;
        if !ids.insert(item.id.clone()) {
            bail!("line {number}: item id '{}' is used twice", item.id);
        }
        items.push(item);
        if items.len() > MAX_ITEMS {
            bail!("line {number}: a dataset holds at most {MAX_ITEMS} items");
        }
    }
    if items.is_empty() {
        bail!("the dataset has no items");
    }
    Ok(items)
}

fn parse_line(line: &str) -> anyhow::Result<Item> {
    let line: Line = serde_json::from_str(line).context("not an eval item")?;
    name(&line.id, "id")?;
    if let Some(class) = &line.task_class {
        name(class, "task_class")?;
    }
    let messages = match (line.prompt, line.messages) {
        (Some(prompt), None) => vec![serde_json::json!({"role": "user", "content": prompt})],
        (None, Some(messages)) => {
            check_messages(&messages)?;
            messages
        }
        _ => bail!("give exactly one of 'prompt' and 'messages'"),
    };
    let check = Check::parse(line.check).context("check")?;
    Ok(Item {
        id: line.id,
        messages,
        task_class: line.task_class,
        max_tokens: line.max_tokens,
        response_format: line.response_format,
        check,
    })
}

fn name(value: &str, field: &str) -> anyhow::Result<()> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > MAX_NAME_CHARS || value.chars().any(char::is_control) {
        bail!("'{field}' must be 1 to {MAX_NAME_CHARS} characters without control characters");
    }
    Ok(())
}

fn check_messages(messages: &[Value]) -> anyhow::Result<()> {
    if messages.is_empty() {
        bail!("'messages' is empty");
    }
    for (i, m) in messages.iter().enumerate() {
        if !m["role"].is_string() {
            bail!("messages[{i}] has no 'role'");
        }
    }
    if !messages.iter().any(|m| m["role"] == "user") {
        bail!("'messages' has no user message");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let text = concat!(
            r#"{"id":"a","prompt":"hi","check":{"kind":"exact","expected":"hello"}}"#,
            "\n\n",
            r#"{"id":"b","prompt":"hi","check":{"kind":"regex","pattern":"("}}"#,
        );
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.starts_with("line 3: check:"), "{err}");
    }

    #[test]
    fn prompt_and_messages_are_exclusive_and_ids_unique() {
        let both = r#"{"id":"a","prompt":"hi","messages":[{"role":"user","content":"hi"}],"check":{"kind":"exact","expected":"x"}}"#;
        assert!(format!("{:#}", parse(both).unwrap_err()).contains("exactly one"));
        let twice = concat!(
            r#"{"id":"a","prompt":"hi","check":{"kind":"exact","expected":"x"}}"#,
            "\n",
            r#"{"id":"a","prompt":"ho","check":{"kind":"exact","expected":"x"}}"#,
        );
        assert!(format!("{:#}", parse(twice).unwrap_err()).contains("line 2: item id 'a'"));
    }

    #[test]
    fn the_shipped_smoke_set_parses_and_every_line_follows_the_item_schema() {
        let text = include_str!("../../datasets/evals/smoke.jsonl");
        let items = parse(text).unwrap();
        let kinds: HashSet<&str> = items.iter().map(|i| i.check.kind().as_str()).collect();
        assert_eq!(kinds.len(), 5, "every check kind is covered");
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/eval/item.v1.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line).unwrap();
            assert!(validator.is_valid(&value), "line {}: {line}", n + 1);
        }
        let bad: Value = serde_json::from_str(
            r#"{"id":"x","prompt":"p","messages":[],"check":{"kind":"exact","expected":"y"}}"#,
        )
        .unwrap();
        assert!(!validator.is_valid(&bad));
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let typo = r#"{"id":"a","promt":"hi","check":{"kind":"exact","expected":"x"}}"#;
        let err = format!("{:#}", parse(typo).unwrap_err());
        assert!(err.contains("line 1") && err.contains("promt"), "{err}");
    }
}
