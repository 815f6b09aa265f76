//! The admin CLI (`lumina accounts …`, `lumina keys …`): a thin client of the admin API, so
//! the CLI and HTTP users see the same behaviour and errors.

use std::io::Write;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;

/// Where the admin API is and how to authenticate.
pub struct AdminClient {
    base: String,
    admin_key: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of the gateway at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, admin_key: String) -> anyhow::Result<AdminClient> {
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            admin_key,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    /// Sends one admin request and returns the JSON body, or fails with the API's error message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}; is `lumina serve` running?"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

impl AdminClient {
    /// Sends one admin GET and returns the body as text (CSV statements).
    pub async fn call_text(&self, method: Method, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}; is `lumina serve` running?"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!("{status}: {message}");
        }
        Ok(text)
    }
}

/// Prints a JSON value for people.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}
