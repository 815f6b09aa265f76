//! The one helper that runs the real `lumina` binary for end-to-end tests: spawns it on a free
//! port with its own data dir, captures its output, and talks HTTP to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod dist;
pub mod upstream;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lumina")
}

/// A port nobody listens on right now, and never handed out before in this test process (the
/// kernel may give a just-closed port again, and two servers of concurrent tests would race
/// for it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A running `lumina serve`.
pub struct Lumina {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub output_dir: PathBuf,
    /// Extra environment for restarts.
    env: Vec<(String, String)>,
    /// Configuration file passed with `--config`, if any.
    config: Option<PathBuf>,
    port: u16,
    starts: u32,
    /// `serve`, or `gateway` in distributed mode.
    command: &'static str,
    /// The admin key.
    pub admin_key: String,
    /// Shell commands run before the binary replaces the shell (`ulimit -n 1024`, `umask 022`).
    shell: Option<String>,
    http: reqwest::Client,
}

impl Lumina {
    /// Starts `lumina serve` in `data_dir` with extra environment.
    pub async fn start(data_dir: &Path, output_dir: &Path, env: &[(&str, &str)]) -> Lumina {
        Lumina::start_with_config(data_dir, output_dir, env, None).await
    }

    /// Starts `lumina serve` with a configuration file holding `config`.
    pub async fn start_with_config(
        data_dir: &Path,
        output_dir: &Path,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Lumina {
        let mut lumina = Lumina::start_unspawned(data_dir, output_dir, env, config);
        lumina.spawn().await;
        lumina
    }

    /// Starts `lumina serve` from a shell that first runs `shell` (resource limits, umask).
    pub async fn start_in_shell(
        data_dir: &Path,
        output_dir: &Path,
        env: &[(&str, &str)],
        config: Option<&str>,
        shell: &str,
    ) -> Lumina {
        let mut lumina = Lumina::start_unspawned(data_dir, output_dir, env, config);
        lumina.shell = Some(shell.to_string());
        lumina.spawn().await;
        lumina
    }

    fn start_unspawned(
        data_dir: &Path,
        output_dir: &Path,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Lumina {
        lumina_gateway::providers::install_crypto_provider();
        std::fs::create_dir_all(output_dir).unwrap();
        let config = config.map(|text| {
            let path = output_dir.join("lumina.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        Lumina {
            child: None,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: free_port(),
            starts: 0,
            command: "serve",
            admin_key: String::new(),
            shell: None,
            http: reqwest::Client::new(),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The highest resident set size the process has had since it started, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let pid = self.pid().expect("lumina is not running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Starts `lumina gateway` (distributed mode) with a configuration file holding `config`.
    pub async fn start_gateway(
        data_dir: &Path,
        output_dir: &Path,
        env: &[(&str, &str)],
        config: &str,
    ) -> Lumina {
        std::fs::create_dir_all(output_dir).unwrap();
        let path = output_dir.join("lumina.toml");
        std::fs::write(&path, config).unwrap();
        let mut lumina = Lumina {
            child: None,
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            config: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: free_port(),
            starts: 0,
            command: "gateway",
            admin_key: String::new(),
            shell: None,
            http: reqwest::Client::new(),
        };
        lumina.spawn().await;
        lumina
    }

    async fn spawn(&mut self) {
        // A second process on the port would fail to bind while the first went on answering
        // (and outlived the test): a restart needs `stop`, `kill9` or the process gone first.
        if let Some(child) = self.child.as_mut() {
            assert!(
                child.try_wait().unwrap().is_some(),
                "lumina is still running: stop or kill it before starting it again"
            );
        }
        self.starts += 1;
        std::fs::create_dir_all(&self.output_dir).unwrap();
        let stdout =
            std::fs::File::create(self.output_dir.join(format!("stdout.{}", self.starts))).unwrap();
        let stderr =
            std::fs::File::create(self.output_dir.join(format!("stderr.{}", self.starts))).unwrap();
        let mut command = match &self.shell {
            Some(shell) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{shell}\nexec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        command
            .args([
                self.command,
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .env_remove("LUMINA_ADMIN_KEY")
            .env_remove("LUMINA_DATABASE_URL")
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().unwrap());
        self.url = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "lumina exited with {status} during start:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "lumina did not become ready:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.admin_key = std::fs::read_to_string(self.data_dir.join("admin.key"))
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| {
                self.env
                    .iter()
                    .find(|(k, _)| k == "LUMINA_ADMIN_KEY")
                    .map(|(_, v)| v.clone())
                    .expect("no admin key")
            });
    }

    /// Everything the process printed so far, all starts included.
    pub fn output(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            for stream in ["stdout", "stderr"] {
                let path = self.output_dir.join(format!("{stream}.{i}"));
                all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
            }
        }
        all
    }

    /// The demo key printed on first start, if any.
    pub fn demo_key(&self) -> Option<String> {
        let out = std::fs::read_to_string(self.output_dir.join("stdout.1")).ok()?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("demo key:"))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    }

    /// Stops with SIGTERM (graceful) and waits.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "lumina ignored SIGTERM");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Sends SIGTERM and returns how long it took to exit (SIGKILL after 30 s).
    pub async fn terminate(&mut self) -> Duration {
        terminate(&mut self.child).await
    }

    /// Kills with SIGKILL and waits.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-KILL");
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// A request with `bearer` (or none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
        (status, headers, value)
    }

    /// An admin request expecting `expected` status; returns the body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, _, value) = self
            .request(method, path, Some(&self.admin_key.clone()), body.as_deref())
            .await;
        assert_eq!(status, expected, "{path}: {value}");
        value
    }

    /// The ledger balance of `account` as the admin API shows it.
    pub async fn balance(&self, account: &str) -> Value {
        self.admin(
            reqwest::Method::GET,
            &format!("/admin/accounts/{account}"),
            None,
            200,
        )
        .await["balance"]
            .clone()
    }

    /// Opens an account with `credits` and returns its id.
    pub async fn account(&self, name: &str, credits: &str) -> String {
        let v = self
            .admin(
                reqwest::Method::POST,
                "/admin/accounts",
                Some(json!({"name": name, "credits": credits})),
                201,
            )
            .await;
        v["id"].as_str().unwrap().to_string()
    }

    /// Issues a key for `account` and returns (id, key).
    pub async fn key(&self, account: &str) -> (String, String) {
        self.key_with(account, json!({})).await
    }

    /// Issues a key with extra fields (`rpm`, `tpm`, …) and returns (id, key).
    pub async fn key_with(&self, account: &str, extra: Value) -> (String, String) {
        let mut body = json!({"account_id": account, "name": "test"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let v = self
            .admin(reqwest::Method::POST, "/admin/keys", Some(body), 201)
            .await;
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    /// A chat completion request with `key`; returns status, headers and the raw body.
    pub async fn chat(&self, key: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
        let res = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }

    /// What `/metrics` shows now.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of every series of Prometheus metric `name` in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Every event in the data dir's log, as `lumina replay` prints them.
    pub fn events(&self) -> Vec<Value> {
        let (ok, stdout, stderr) = run(
            &["replay", "--data-dir", self.data_dir.to_str().unwrap()],
            &[],
        );
        assert!(ok, "{stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The events of one request, in log order.
    pub fn events_of(&self, request_id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["request_id"] == request_id)
            .collect()
    }
}

impl Drop for Lumina {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends SIGTERM to `child`, if it runs, and returns how long it took to exit (SIGKILL after
/// 30 s).
pub async fn terminate(child: &mut Option<Child>) -> Duration {
    let Some(mut child) = child.take() else {
        return Duration::ZERO;
    };
    signal(child.id(), "-TERM");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// Sends a signal through the `kill` command (no `unsafe` in the tests either).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Asserts `body` is an OpenAI error object and returns it.
pub fn assert_openai_error(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(error.is_object(), "not an OpenAI error: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
    error
}

/// A header's value as text ("" when absent).
pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A chat completion body with one user message.
pub fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The payloads of the events of `event_type` among `events`, in order.
pub fn payloads<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .map(|e| &e["payload"])
        .collect()
}

/// The events of an Anthropic SSE stream, as (event type, data).
pub fn parse_anthropic_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut kind = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let value: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("{e}: not a JSON event: {block:?}"));
            assert_eq!(
                value["type"],
                kind.as_str(),
                "event type and data disagree: {block}"
            );
            (kind, value)
        })
        .collect()
}

/// A decimal credit amount as written in JSON, as nano-credits (exact: parsed from the text).
pub fn nanos(text: &str) -> i64 {
    lumina_schemas::NanoCredits::parse_credits(text).unwrap().0
}

/// Every row of `tables` (each with the `ORDER BY` that makes its order stable; "" for none),
/// as text, for equality checks between a live database and a rebuilt one.
pub async fn dump_tables(url: &str, tables: &[(&str, &str)]) -> Vec<String> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let mut out = Vec::new();
    for (table, order) in tables {
        let order = if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {order}")
        };
        let sql = sqlx::AssertSqlSafe(format!("SELECT * FROM {table}{order}"));
        for row in sqlx::query(sql).fetch_all(&mut conn).await.unwrap() {
            let mut line = table.to_string();
            for i in 0..row.len() {
                let cell = row
                    .try_get::<Option<String>, _>(i)
                    .map(|v| format!("{v:?}"))
                    .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                    .or_else(|_| row.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                    .unwrap();
                line.push(' ');
                line.push_str(&cell);
            }
            out.push(line);
        }
    }
    let _ = conn.close().await;
    out
}

/// Runs the binary to completion with `args` and `env`; returns (success, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(bin());
    command.args(args).env_remove("LUMINA_DATABASE_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every row of the spine's read-model tables, as text, for equality checks.
pub async fn dump_read_models(url: &str) -> Vec<String> {
    let tables = ["accounts", "projects", "credit_grants", "api_keys"].map(|t| (t, "1"));
    dump_tables(url, &tables).await
}

/// The Python with the official SDKs (`LUMINA_TEST_PYTHON`, a venv `scripts/test.sh` builds).
pub fn python() -> String {
    std::env::var("LUMINA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LUMINA_TEST_PYTHON is not set: run ./scripts/test.sh, which creates a venv with the openai and anthropic packages")
    })
}

/// Runs `script` with `args` in the SDKs' Python; asserts it succeeded and returns its stdout.
pub async fn run_python(script: &'static str, args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    stdout
}

/// Asserts `lumina reconcile` finds the journal of `lumina`'s data dir and its events in
/// agreement.
pub fn reconciles(lumina: &Lumina) {
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = run(&["reconcile", "--data-dir", &data, "--wait", "10"], &[]);
    assert!(ok, "reconcile failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("reconcile: clean"), "{stdout}");
}

/// The `api` of each request `key`'s account logged on `path` (every path when `None`), once
/// `/v1/requests` shows `n` of them (or after 20 s).
pub async fn logged_apis(lumina: &Lumina, key: &str, path: Option<&str>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, page) = lumina
            .request(
                reqwest::Method::GET,
                "/v1/requests?limit=100",
                Some(key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let apis: Vec<Value> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| path.is_none_or(|p| r["path"] == p))
            .map(|r| r["api"].clone())
            .collect();
        if apis.len() == n || Instant::now() > deadline {
            return apis;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The account's ledger spend once it has journaled `spent` nano-credits and holds nothing
/// (or after 20 s).
pub async fn spent_after(lumina: &Lumina, account: &str, spent: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = lumina.balance(account).await;
        let now = b["spent_nano"].as_i64().unwrap();
        if (now == spent && b["held_nano"] == 0) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the `Set-Cookie` named `name` in `response`.
fn set_cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}="))?.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie: {:?}", response.headers()))
        .to_string()
}

/// Signs in to the dashboard with `key` as a browser would (the login form's CSRF token, then
/// the form) and returns the session's `cookie` header.
pub async fn dashboard_session(base: &str, key: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{base}/dashboard/login"))
        .send()
        .await
        .unwrap();
    let login = set_cookie(&form, "lumina_login");
    let page = form.text().await.unwrap();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form's CSRF token");
    let body = format!("csrf={csrf}&key={}", key.replace('+', "%2B"));
    let signed = http
        .post(format!("{base}/dashboard/login"))
        .header("cookie", format!("lumina_login={login}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303, "sign-in refused");
    format!("lumina_session={}", set_cookie(&signed, "lumina_session"))
}
