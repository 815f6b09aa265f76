//! Upstream answers are untrusted input: the real `lumina serve` in front of an
//! OpenAI-compatible mock that misbehaves on purpose — absurd token counts, usage in odd
//! shapes, redirects to another host, 200s that are not completions, refused keys, rate limits
//! with `retry-after`, bodies and streams that never end, error events mid-stream. No balance
//! wraps, no settlement is dead-lettered, every charge stays within its hold's output
//! allowance, and what the client is told it paid is what the ledger journaled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::upstream::{MockUpstream, Mocked, gateway_config, parse_sse};
use common::{Lumina, assert_openai_error, header, nanos, payloads, run, user};
use serde_json::{Value, json};

struct Setup {
    _tmp: tempfile::TempDir,
    mock: MockUpstream,
    lumina: Lumina,
    account: String,
    key: String,
}

async fn setup_config(config: impl FnOnce(&MockUpstream) -> String, credits: &str) -> Setup {
    let Mocked { tmp, mock, lumina } = Mocked::start(config, &[]).await;
    let account = lumina.account("Untrusted Co", credits).await;
    let (_, key) = lumina.key(&account).await;
    Setup {
        _tmp: tmp,
        mock,
        lumina,
        account,
        key,
    }
}

async fn setup() -> Setup {
    setup_config(|mock| gateway_config(mock, ""), "10").await
}

/// [`gateway_config`] with breakers that do not open, for tests that fail one deployment
/// many times and watch every attempt.
fn no_breaker(mock: &MockUpstream) -> String {
    gateway_config(mock, "").replace("consecutive_failures = 3", "consecutive_failures = 1000")
}

/// The charge a client was told: `usage.cost` of a body or of a stream's usage chunk, in nano.
fn told_cost(usage: &Value) -> i64 {
    assert!(usage["cost"].is_number(), "no usage.cost: {usage}");
    nanos(&usage["cost"].to_string())
}

/// The account's ledger balance once it has journaled `spent` nano-credits of charges and no
/// hold is open (or, after a while, whatever it shows).
async fn balance_after(lumina: &Lumina, account: &str, spent: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = lumina
            .admin(
                reqwest::Method::GET,
                &format!("/admin/accounts/{account}"),
                None,
                200,
            )
            .await;
        let b = &v["balance"];
        if (b["spent_nano"] == spent && b["held_nano"] == 0) || Instant::now() > deadline {
            return b.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Providers `a`, `b` and `c` (the misbehaving ones) lead fast, balanced and reasoning, with
/// `secondary` behind each.
fn three_paths(mock: &MockUpstream) -> String {
    let provider = |name: &str, model: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = {{ fast = \"{model}\", balanced = \"{model}\", reasoning = \"{model}\" }}\ntimeout_ms = 5000\n\n",
            mock.base_url(name)
        )
    };
    let mut config = String::new();
    for (name, model) in [
        ("a", "m-a"),
        ("b", "m-b"),
        ("c", "m-c"),
        ("secondary", "m-2"),
    ] {
        config.push_str(&provider(name, model));
    }
    config.push_str(
        "[routes.fast]\nproviders = [\"a\", \"secondary\"]\n[routes.balanced]\nproviders = [\"b\", \"secondary\"]\n[routes.reasoning]\nproviders = [\"c\", \"secondary\"]\n[breaker]\nconsecutive_failures = 1000\nmin_requests = 1000\n",
    );
    config
}

#[tokio::test]
async fn absurd_token_counts_never_wrap_a_balance_and_every_charge_is_journaled() {
    let s = setup_config(three_paths, "1").await;
    let client = reqwest::Client::new();
    let models = ["lumina-fast", "lumina-balanced", "lumina-reasoning"];
    let mut told = 0i64;
    // Counts beyond any sane bound (10^16, 2^63−1, 10^12), all at once, streamed and not;
    // then a count within bounds but far beyond max_tokens (10^6).
    for round in [
        ["10000000000000000", "9223372036854775807", "1000000000000"],
        ["1000000", "1000000", "1000000"],
    ] {
        for (provider, count) in ["a", "b", "c"].into_iter().zip(round) {
            s.mock.set(provider, &format!("completion={count}"));
        }
        let mut tasks = Vec::new();
        for (i, model) in models.iter().enumerate() {
            for stream in [false, true, false, true] {
                let mut body = user(model, &format!("absurd {i}"));
                body["max_tokens"] = json!(10);
                if stream {
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({"include_usage": true});
                }
                let request = client
                    .post(format!("{}/v1/chat/completions", s.lumina.url))
                    .bearer_auth(&s.key)
                    .json(&body);
                tasks.push(tokio::spawn(async move {
                    let res = request.send().await.unwrap();
                    let status = res.status().as_u16();
                    let provider = header(res.headers(), "x-lumina-provider").to_string();
                    (stream, status, provider, res.text().await.unwrap())
                }));
            }
        }
        for task in tasks {
            let (stream, status, provider, text) = task.await.unwrap();
            assert_eq!(status, 200, "{text}");
            let usage = if stream {
                let (events, done) = parse_sse(&text);
                assert!(done, "{text}");
                events.last().unwrap()["usage"].clone()
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                if round[0] != "1000000" {
                    // A whole answer with nonsense usage is a malformed answer: it fell back.
                    assert_eq!(provider, "secondary", "{text}");
                }
                v["usage"].clone()
            };
            let completion = usage["completion_tokens"].as_u64().unwrap();
            assert!(completion <= 10, "billed beyond max_tokens: {usage}");
            told += told_cost(&usage);
        }
    }
    let balance = balance_after(&s.lumina, &s.account, told).await;
    assert_eq!(balance["spent_nano"], told, "{balance}");
    assert_eq!(
        balance["available_nano"].as_i64().unwrap(),
        1_000_000_000 - told
    );
    assert!(balance["available_nano"].as_i64().unwrap() > 0);
    let events = s.lumina.events();
    let settled = payloads(&events, "RequestSettled");
    assert_eq!(settled.len(), 24);
    let anomalies = |kind: &str| {
        settled
            .iter()
            .filter(|p| p["usage_anomaly"] == kind)
            .count()
    };
    // Streamed nonsense was estimated from what the client received; 10^6 was clamped.
    assert_eq!(anomalies("usage_out_of_range"), 6);
    assert_eq!(anomalies("completion_clamped"), 12);
    assert!(
        settled
            .iter()
            .any(|p| p["reported_completion_tokens"] == 1_000_000)
    );
    assert_eq!(
        s.lumina.metric("lumina_consumer_dead_letters_total").await,
        0.0
    );
    let (ok, stdout, stderr) = run(
        &[
            "reconcile",
            "--data-dir",
            s.lumina.data_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert!(ok, "reconcile: {stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let charged: i64 = settled
        .iter()
        .map(|p| p["charge_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(report["charged_nano"], charged, "{report}");
    assert_eq!(charged, told);
}

#[tokio::test]
async fn usage_in_an_unknown_shape_is_estimated_and_flagged() {
    let s = setup().await;
    for shape in [
        "{}",
        r#"{"total_tokens":5000}"#,
        r#"{"input_tokens":4000,"output_tokens":4000}"#,
        "[1, 2]",
    ] {
        s.mock.set("primary", &format!("usage={shape}"));
        let (status, headers, text) = s
            .lumina
            .chat(&s.key, &user("lumina-fast", "odd usage"))
            .await;
        assert_eq!(status, 200, "{shape}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{shape}: {v}"
        );
        assert!(told_cost(&v["usage"]) > 0, "{shape}: billed zero");
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        let settled = payloads(&events, "RequestSettled")[0];
        assert_eq!(settled["usage"]["estimated"], true, "{shape}");
        assert_eq!(settled["usage_anomaly"], "usage_unrecognized", "{shape}");
        assert_eq!(
            settled["charge_nano"].as_i64().unwrap(),
            told_cost(&v["usage"])
        );
    }
}

/// A host on another port that counts the connections it receives.
async fn trap() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/steal", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, hits)
}

#[tokio::test]
async fn redirects_are_not_followed_and_fall_back() {
    let s = setup_config(no_breaker, "10").await;
    let (url, hits) = trap().await;
    for mode in ["redirect302", "redirect307"] {
        s.mock.set("primary", &format!("{mode}={url}"));
        for stream in [false, true] {
            let mut body = user("lumina-fast", "a prompt for the trap");
            body["stream"] = json!(stream);
            let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
            assert_eq!(status, 200, "{mode}: {text}");
            assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
            let events = s.lumina.events_of(header(&headers, "x-request-id"));
            let attempts = payloads(&events, "UpstreamAttempted");
            assert_eq!(attempts[0]["error_class"], "misconfigured", "{mode}");
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a redirect was followed");
}

#[tokio::test]
async fn a_success_status_that_is_not_a_completion_falls_back() {
    let s = setup_config(no_breaker, "10").await;
    for body in [
        r#"{"error":{"message":"quota","type":"x"}}"#,
        "[]",
        "{}",
        r#"{"choices":[]}"#,
    ] {
        s.mock.set("primary", &format!("body={body}"));
        for stream in [false, true] {
            let mut request = user("lumina-fast", "not a completion");
            request["stream"] = json!(stream);
            let (status, headers, text) = s.lumina.chat(&s.key, &request).await;
            assert_eq!(status, 200, "{body}: {text}");
            assert_eq!(header(&headers, "x-lumina-provider"), "secondary", "{body}");
            let events = s.lumina.events_of(header(&headers, "x-request-id"));
            let attempts = payloads(&events, "UpstreamAttempted");
            assert_eq!(attempts.len(), 2, "{body}");
            assert_eq!(attempts[0]["outcome"], "error");
        }
    }
}

#[tokio::test]
async fn a_refused_deployment_key_falls_back_opens_the_breaker_and_stays_private() {
    let s = setup().await;
    s.mock.set("primary", "fail401");
    for i in 0..3 {
        let (status, headers, text) = s
            .lumina
            .chat(&s.key, &user("lumina-fast", "refused key"))
            .await;
        assert_eq!(status, 200, "{i}: {text}");
        assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
    }
    // Three failures in a row open the breaker (`consecutive_failures = 3`): the next request
    // does not even try the refused deployment.
    let before = s.mock.requests_of("primary").len();
    assert_eq!(before, 3);
    let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-fast", "skip it")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-attempts"), "1");
    assert_eq!(s.mock.requests_of("primary").len(), before);
    // Both refused: a 502 naming each deployment, never the upstream's words about its key.
    tokio::time::sleep(Duration::from_millis(350)).await;
    s.mock.set("secondary", "fail401");
    let (status, _, text) = s
        .lumina
        .chat(&s.key, &user("lumina-balanced", "all refused"))
        .await;
    assert_eq!(status, 502, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let message = assert_openai_error(&v)["message"].as_str().unwrap();
    assert!(
        message.contains("primary/")
            && message.contains("secondary/")
            && message.contains("misconfigured"),
        "{message}"
    );
    assert!(
        !text.contains("sk-") && !text.contains("Incorrect API key"),
        "{text}"
    );
}

#[tokio::test]
async fn an_upstream_retry_after_reaches_the_client_when_every_attempt_was_rate_limited() {
    let s = setup().await;
    s.mock.set("primary", "retry429=7");
    s.mock.set("secondary", "retry429=9");
    let (status, headers, text) = s.lumina.chat(&s.key, &user("lumina-fast", "busy")).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(header(&headers, "retry-after"), "7");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(assert_openai_error(&v)["code"], "upstream_rate_limited");
}

fn bounded(mock: &MockUpstream) -> String {
    no_breaker(mock).replace(
        "first_byte_timeout_ms = 700\n",
        "first_byte_timeout_ms = 700\nmax_response_bytes = 1048576\nmax_stream_bytes = 1048576\n",
    )
}

#[tokio::test]
async fn bodies_and_streams_that_never_end_fail_at_their_bound() {
    let s = setup_config(bounded, "10").await;
    // Four whole answers that never end, at once: each attempt stops at 1 MiB and falls back.
    s.mock.set("primary", "endless");
    let mut tasks = Vec::new();
    for i in 0..4 {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", s.lumina.url))
            .bearer_auth(&s.key)
            .json(&user("lumina-fast", &format!("endless {i}")));
        tasks.push(tokio::spawn(async move {
            let res = request.send().await.unwrap();
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body: Value = res.json().await.unwrap();
            (status, headers, body)
        }));
    }
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
        // The endless attempt stopped at its byte bound, not at the 5 s timeout, and cost
        // nothing beyond the hold.
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        let failed = payloads(&events, "UpstreamAttempted")[0];
        assert_eq!(failed["provider"], "primary", "{failed}");
        assert_eq!(failed["error_class"], "malformed", "{failed}");
        assert!(
            failed["duration_us"].as_i64().unwrap() < 3_000_000,
            "{failed}"
        );
        let routed = payloads(&events, "RequestRouted")[0];
        let settled = payloads(&events, "RequestSettled")[0];
        let charge = settled["charge_nano"].as_i64().unwrap();
        assert!(
            charge <= routed["hold"]["amount_nano"].as_i64().unwrap(),
            "{settled} {routed}"
        );
        assert_eq!(charge, told_cost(&body["usage"]));
    }
    // The peak, not the level after the fact: memory freed again would pass the latter.
    assert!(
        s.lumina.peak_rss_kib() < 200 * 1024,
        "peak RSS {} KiB",
        s.lumina.peak_rss_kib()
    );
    // A stream that never ends: it stops at 1 MiB with an error event and is charged within
    // its hold.
    s.mock.set("primary", "endless_sse");
    let mut body = user("lumina-fast", "endless stream");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(50);
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    assert!(
        text.len() > 1_000_000 && text.len() < 1_200_000,
        "{} bytes",
        text.len()
    );
    let (events, done) = parse_sse(&text);
    assert!(!done);
    assert_eq!(events.last().unwrap()["error"]["code"], "upstream_cut");
    assert!(
        s.lumina.peak_rss_kib() < 200 * 1024,
        "peak RSS {} KiB",
        s.lumina.peak_rss_kib()
    );
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    let routed = payloads(&events, "RequestRouted")[0];
    let settled = payloads(&events, "RequestSettled")[0];
    assert_eq!(settled["outcome"], "cut_midstream");
    assert_eq!(settled["error_class"], "malformed");
    assert!(settled["usage"]["completion_tokens"].as_i64().unwrap() <= 50);
    assert!(
        settled["charge_nano"].as_i64().unwrap() <= routed["hold"]["amount_nano"].as_i64().unwrap(),
        "{settled} {routed}"
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_as_cut() {
    let s = setup().await;
    s.mock.set("primary", "error_event");
    let mut body = user("lumina-fast", "one two three four five");
    body["stream"] = json!(true);
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    let (events, done) = parse_sse(&text);
    assert!(!done, "{text}");
    assert_eq!(events.last().unwrap()["error"]["code"], "upstream_cut");
    assert!(events.iter().all(|e| e.get("type").is_none()), "{text}");
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    assert_eq!(
        payloads(&events, "RequestSettled")[0]["outcome"],
        "cut_midstream"
    );
}
