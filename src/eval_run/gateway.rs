//! The eval runner's client of a gateway: chat completions as any client sends them (the
//! charge, path and deployment read from the `x-lumina-*` headers, the latency measured here)
//! and `POST /v1/evals/results`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lumina_gateway::api::evals::{EvalResult, EvalResultsBody, RecordedResults};
use lumina_schemas::NanoCredits;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A gateway and the API key the run uses.
pub struct Gateway {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// A completion the gateway answered.
#[derive(Debug, Clone)]
pub struct Answered {
    /// `x-request-id`.
    pub request_id: String,
    /// The assistant's text ("" for an answer without text).
    pub text: String,
    /// `x-lumina-cost`, exactly.
    pub cost: NanoCredits,
    /// `x-lumina-route`.
    pub path: String,
    /// `x-lumina-deployment`.
    pub deployment: String,
    /// From sending the request to the last byte of the answer, milliseconds.
    pub latency_ms: f64,
}

/// A completion the gateway did not answer.
#[derive(Debug, Clone)]
pub struct Failed {
    /// `x-request-id`, when the gateway answered at all.
    pub request_id: Option<String>,
    /// What went wrong, for people.
    pub message: String,
    /// Whether the gateway could not be reached (no HTTP answer at all).
    pub unreachable: bool,
}

/// What a completion request to send.
pub struct Completion<'a> {
    /// The `model`.
    pub model: &'a str,
    /// The `messages`.
    pub messages: &'a [Value],
    /// `max_tokens`, if any.
    pub max_tokens: Option<u32>,
    /// `response_format`, if any.
    pub response_format: Option<&'a Value>,
    /// `temperature`, if any.
    pub temperature: Option<f64>,
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Gateway {
    /// A client of the gateway at `base` with `key`; each request may take `timeout`.
    pub fn new(base: &str, key: String, timeout: Duration) -> anyhow::Result<Gateway> {
        Ok(Gateway {
            base: base.trim_end_matches('/').to_string(),
            key,
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Checks the gateway answers and takes the key, with `GET /v1/models`.
    pub async fn check(&self) -> anyhow::Result<()> {
        let url = format!("{}/v1/models", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!(
                "the gateway at {} refused the key: {status}: {}",
                self.base,
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("no error message")
            );
        }
        Ok(())
    }

    /// Sends one non-streaming chat completion.
    pub async fn complete(&self, c: &Completion<'_>) -> Result<Answered, Failed> {
        let mut body = json!({"model": c.model, "messages": c.messages});
        if let Some(max) = c.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if let Some(format) = c.response_format {
            body["response_format"] = format.clone();
        }
        if let Some(t) = c.temperature {
            body["temperature"] = json!(t);
        }
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failed {
                request_id: None,
                message: format!("no answer from the gateway: {e}"),
                unreachable: e.is_connect(),
            })?;
        let status = response.status();
        let request_id = header(&response, "x-request-id");
        let cost = header(&response, "x-lumina-cost");
        let path = header(&response, "x-lumina-route").unwrap_or_default();
        let deployment = header(&response, "x-lumina-deployment").unwrap_or_default();
        let failed = |message: String| Failed {
            request_id: request_id.clone(),
            message,
            unreachable: false,
        };
        let text = response
            .text()
            .await
            .map_err(|e| failed(format!("the answer broke off: {e}")))?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != StatusCode::OK {
            return Err(failed(format!(
                "{status}: {}",
                value["error"]["message"]
                    .as_str()
                    .unwrap_or("no error message")
            )));
        }
        let Some(request_id) = request_id.clone() else {
            return Err(failed("the answer has no x-request-id".into()));
        };
        let cost = cost
            .as_deref()
            .map(NanoCredits::parse_credits)
            .ok_or_else(|| failed("the answer has no x-lumina-cost".into()))?
            .map_err(|e| failed(format!("x-lumina-cost: {e}")))?;
        Ok(Answered {
            request_id,
            text: value["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            cost,
            path,
            deployment,
            latency_ms,
        })
    }

    /// Records scored items (`POST /v1/evals/results`), at most
    /// [`lumina_gateway::api::evals::MAX_RESULTS`] at a time.
    pub async fn record(&self, results: Vec<EvalResult>) -> anyhow::Result<RecordedResults> {
        let url = format!("{}/v1/evals/results", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.key)
            .json(&EvalResultsBody { results })
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        if status != StatusCode::CREATED {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!(
                "the gateway did not record the results: {status}: {}",
                value["error"]["message"]
                    .as_str()
                    .unwrap_or("no error message")
            );
        }
        serde_json::from_str(&text).context("the gateway's answer to the results")
    }
}
