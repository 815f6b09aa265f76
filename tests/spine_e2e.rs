//! End to end against the real binary: accounts and keys through the admin API, key checks on
//! `/v1/models`, restarts, the admin key, OpenAI-shaped errors, and no key in clear text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Lumina, assert_openai_error, run};
use reqwest::Method;
use serde_json::{Value, json};

fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    (tmp, data, out)
}

async fn models_status(lumina: &Lumina, key: Option<&str>) -> (u16, Value) {
    let (status, headers, body) = lumina.request(Method::GET, "/v1/models", key, None).await;
    assert!(headers.contains_key("x-request-id"));
    (status, body)
}

async fn key_lifecycle(lumina: &mut Lumina) {
    let created = lumina
        .admin(
            Method::POST,
            "/admin/accounts",
            Some(json!({"name": "Acme", "credits": "100"})),
            201,
        )
        .await;
    let account = created["id"].as_str().unwrap().to_string();
    assert!(account.starts_with("acct_"));
    assert!(created["project_id"].as_str().unwrap().starts_with("proj_"));
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["credits_granted"], "100");

    let key = lumina
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"account_id": account, "name": "ci"})),
            201,
        )
        .await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let secret = key["key"].as_str().unwrap().to_string();
    assert!(key_id.starts_with("key_") && secret.starts_with("lum_"));
    assert_eq!(key["project_id"], created["project_id"]);

    // The key works on the very next request.
    let (status, body) = models_status(lumina, Some(&secret)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "lumina-auto",
        "lumina-fast",
        "lumina-balanced",
        "lumina-reasoning",
        "lumina-thinking",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(body["data"][0]["created"].is_i64() && body["data"][0]["owned_by"] == "lumina");

    let (status, body) = models_status(lumina, None).await;
    assert_eq!(status, 401);
    assert_eq!(assert_openai_error(&body)["code"], "missing_api_key");
    let (status, body) = models_status(
        lumina,
        Some("lum_000000000000000000000000000000000000000000000000"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(assert_openai_error(&body)["code"], "invalid_api_key");

    // Listed, without the key itself.
    let list = lumina
        .admin(
            Method::GET,
            &format!("/admin/keys?account_id={account}"),
            None,
            200,
        )
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("key").is_none());

    // A second key survives restarts; the first is revoked and fails immediately.
    let (_, keep) = lumina.key(&account).await;
    let revoked = lumina
        .admin(Method::DELETE, &format!("/admin/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(revoked["status"], "revoked");
    let (status, body) = models_status(lumina, Some(&secret)).await;
    assert_eq!(status, 403, "revoked key still accepted: {body}");
    assert_eq!(assert_openai_error(&body)["code"], "api_key_revoked");

    lumina.stop().await;
    lumina.restart().await;
    assert_eq!(models_status(lumina, Some(&keep)).await.0, 200);
    assert_eq!(models_status(lumina, Some(&secret)).await.0, 403);
    let account_after = lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}"),
            None,
            200,
        )
        .await;
    assert_eq!(account_after["credits_granted_nano"], 100_000_000_000i64);
    assert_eq!(
        account_after["balance"]["available_nano"],
        100_000_000_000i64
    );
    assert_eq!(account_after["balance"]["granted"], "100");

    lumina.kill9();
    lumina.restart().await;
    assert_eq!(models_status(lumina, Some(&keep)).await.0, 200);
    assert_eq!(models_status(lumina, Some(&secret)).await.0, 403);
}

#[tokio::test]
async fn keys_work_at_once_fail_at_once_when_revoked_and_survive_restarts() {
    let (_tmp, data, out) = dirs();
    let mut lumina = Lumina::start(&data, &out, &[]).await;
    key_lifecycle(&mut lumina).await;
}

#[tokio::test]
async fn the_same_lifecycle_holds_with_postgresql_read_models() {
    let db = lumina_testkit::fresh_database(lumina_eventlog::Backend::Postgres).await;
    let (_tmp, data, out) = dirs();
    let mut lumina = Lumina::start(&data, &out, &[("LUMINA_DATABASE_URL", db.url.as_str())]).await;
    key_lifecycle(&mut lumina).await;
}

#[tokio::test]
async fn first_start_prints_a_working_demo_key_and_credits_it() {
    let (_tmp, data, out) = dirs();
    let mut lumina = Lumina::start(&data, &out, &[]).await;
    let demo = lumina.demo_key().expect("no demo key printed");
    assert_eq!(models_status(&lumina, Some(&demo)).await.0, 200);
    let stdout = std::fs::read_to_string(out.join("stdout.1")).unwrap();
    assert!(stdout.contains("curl -s http://127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains(&lumina.admin_key),
        "admin key not printed on first start"
    );
    // A second start neither creates another demo account nor prints a key.
    lumina.stop().await;
    lumina.restart().await;
    let second = std::fs::read_to_string(out.join("stdout.2")).unwrap();
    assert!(!second.contains("demo key"), "{second}");
    assert!(!second.contains(&lumina.admin_key));
    let keys = lumina.admin(Method::GET, "/admin/keys", None, 200).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_routes_require_the_admin_key() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start(&data, &out, &[]).await;
    let demo = lumina.demo_key().unwrap();
    let routes: [(Method, &str, Option<&str>); 6] = [
        (Method::POST, "/admin/accounts", Some(r#"{"name":"x"}"#)),
        (Method::GET, "/admin/accounts/acct_x", None),
        (
            Method::POST,
            "/admin/accounts/acct_x/credits",
            Some(r#"{"amount":"1"}"#),
        ),
        (
            Method::POST,
            "/admin/keys",
            Some(r#"{"account_id":"acct_x","name":"x"}"#),
        ),
        (Method::GET, "/admin/keys", None),
        (Method::DELETE, "/admin/keys/key_x", None),
    ];
    for (method, path, body) in routes {
        for bearer in [None, Some("wrong-admin-key-wrong"), Some(demo.as_str())] {
            let (status, _, value) = lumina.request(method.clone(), path, bearer, body).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}: {value}");
            assert_eq!(assert_openai_error(&value)["code"], "admin_key_required");
        }
    }
    // Nothing was created by the refused calls.
    let keys = lumina.admin(Method::GET, "/admin/keys", None, 200).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_gets_openai_errors_with_the_right_status_and_param() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start(&data, &out, &[]).await;
    let admin = lumina.admin_key.clone();
    let account = lumina.account("Param Co", "1").await;
    let cases: Vec<(Method, String, &str, u16, Option<&str>)> = vec![
        (
            Method::POST,
            "/admin/accounts".into(),
            "{not json",
            400,
            None,
        ),
        (Method::POST, "/admin/accounts".into(), "", 400, None),
        (Method::POST, "/admin/accounts".into(), "[1,2]", 400, None),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"credits":"5"}"#,
            400,
            Some("name"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":5}"#,
            400,
            Some("name"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"  "}"#,
            400,
            Some("name"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a","credits":true}"#,
            400,
            Some("credits"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a","credits":"-5"}"#,
            400,
            Some("credits"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a","credits":0}"#,
            400,
            Some("credits"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a","credits":"ten"}"#,
            400,
            Some("credits"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a","credits":"0.0000000001"}"#,
            400,
            Some("credits"),
        ),
        (
            Method::POST,
            "/admin/accounts".into(),
            r#"{"name":"a"} trailing"#,
            400,
            None,
        ),
        (
            Method::POST,
            format!("/admin/accounts/{account}/credits"),
            r#"{"amount":null}"#,
            400,
            Some("amount"),
        ),
        (
            Method::POST,
            format!("/admin/accounts/{account}/credits"),
            r#"{}"#,
            400,
            Some("amount"),
        ),
        (
            Method::POST,
            "/admin/accounts/acct_nope/credits".into(),
            r#"{"amount":"1"}"#,
            404,
            Some("account_id"),
        ),
        (
            Method::GET,
            "/admin/accounts/acct_nope".into(),
            "",
            404,
            Some("account_id"),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            r#"{"account_id":"acct_nope","name":"k"}"#,
            404,
            Some("account_id"),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            format!(r#"{{"account_id":"{account}","name":"k","project_id":"proj_nope"}}"#).leak(),
            404,
            Some("project_id"),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            format!(r#"{{"account_id":"{account}","name":"k","rpm":0}}"#).leak(),
            400,
            Some("rpm"),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            format!(r#"{{"account_id":"{account}","name":"k","rpm":"many"}}"#).leak(),
            400,
            Some("rpm"),
        ),
        (
            Method::DELETE,
            "/admin/keys/key_nope".into(),
            "",
            404,
            Some("id"),
        ),
        (
            Method::GET,
            "/admin/keys?account_id=acct_nope".into(),
            "",
            404,
            Some("account_id"),
        ),
        (Method::GET, "/v1/nothing-here".into(), "", 404, None),
        (Method::PUT, "/admin/accounts".into(), "", 405, None),
    ];
    for (method, path, body, expected, param) in cases {
        let body = (!body.is_empty()).then_some(body);
        let (status, headers, value) = lumina
            .request(method.clone(), &path, Some(&admin), body)
            .await;
        assert_eq!(status, expected, "{method} {path} {body:?}: {value}");
        assert!(
            headers.contains_key("x-request-id"),
            "{method} {path}: no x-request-id"
        );
        let error = assert_openai_error(&value);
        assert_eq!(
            error["param"].as_str(),
            param,
            "{method} {path} {body:?}: {value}"
        );
    }
    // Decimal strings and JSON numbers are both exact.
    for (amount, nano) in [
        (json!("12.5"), 12_500_000_000i64),
        (json!(0.1), 100_000_000),
        (json!(3), 3_000_000_000),
    ] {
        let v = lumina
            .admin(
                Method::POST,
                &format!("/admin/accounts/{account}/credits"),
                Some(json!({"amount": amount})),
                201,
            )
            .await;
        assert_eq!(v["amount_nano"], nano);
    }
    let v = lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}"),
            None,
            200,
        )
        .await;
    assert_eq!(
        v["credits_granted_nano"],
        1_000_000_000i64 + 12_500_000_000 + 100_000_000 + 3_000_000_000
    );
    assert_eq!(v["credits_granted"], "16.6");
    assert_eq!(v["balance"]["available_nano"], 16_600_000_000i64);
    assert_eq!(v["balance"]["available"], "16.6");
    assert_eq!(v["balance"]["held_nano"], 0);
    // The server is still healthy after all that.
    assert_eq!(
        lumina.request(Method::GET, "/healthz", None, None).await.0,
        200
    );
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path);
            }
        }
    }
    hits
}

#[tokio::test]
async fn issued_keys_are_never_stored_or_logged_in_clear_text() {
    let (_tmp, data, out) = dirs();
    let mut lumina = Lumina::start(&data, &out, &[("LUMINA_LOG", "debug")]).await;
    let account = lumina.account("Secretive", "5").await;
    let (key_id, key) = lumina.key(&account).await;
    assert_eq!(models_status(&lumina, Some(&key)).await.0, 200);
    assert_eq!(
        models_status(&lumina, Some(&format!("{key}x"))).await.0,
        401
    );
    lumina
        .admin(Method::DELETE, &format!("/admin/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(models_status(&lumina, Some(&key)).await.0, 403);
    lumina.stop().await;
    let secret_part = &key[4..];
    for needle in [key.as_bytes(), secret_part.as_bytes()] {
        let hits = files_containing(&data, needle);
        assert!(hits.is_empty(), "key found in clear text in {hits:?}");
    }
    let output = lumina.output();
    assert!(
        output.contains("DEBUG") || output.contains("INFO"),
        "no log output captured"
    );
    assert!(
        !output.contains(secret_part),
        "key found in the process output"
    );
    // The log holds its keyed hash instead, readable through replay.
    let (ok, stdout, stderr) = run(
        &[
            "replay",
            "--data-dir",
            data.to_str().unwrap(),
            "--type",
            "ApiKeyCreated",
            "--account",
            &account,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"]["key_id"], key_id);
    assert_eq!(events[0]["payload"]["key_hash"].as_str().unwrap().len(), 64);
    assert!(!stdout.contains(secret_part));
}

#[tokio::test]
async fn readyz_reports_the_projector_and_the_log() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start(&data, &out, &[]).await;
    let (status, _, body) = lumina.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["consumers"]["projector"]["lag_events"], 0);
    assert_eq!(body["consumers"]["ledger"]["lag_events"], 0);
    assert!(body["consumers"]["ledger"]["applied"].as_u64().unwrap() >= 1);
    assert!(body["log"]["committed_position"].as_u64().unwrap() >= 3);
}

/// (name, nice value) of each thread of process `pid`, from `/proc`.
fn threads(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        // `tid (name) state ppid …`: the name may hold spaces; nice is the 19th field.
        let (head, rest) = stat.rsplit_once(") ").unwrap();
        let name = head.split_once(" (").unwrap().1.to_string();
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((name, nice));
    }
    out
}

#[tokio::test]
async fn the_embedded_consumers_run_on_their_own_thread_at_the_configured_nice_value() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start_with_config(&data, &out, &[], Some("[consumers]\nnice = 7\n")).await;
    let account = lumina.account("Nice", "10").await;
    let (_, key) = lumina.key(&account).await;
    let (status, _, body) = lumina
        .chat(&key, &common::user("lumina-fast", "hello"))
        .await;
    assert_eq!(status, 200, "{body}");
    // The request's events reach the views and the ledger through that thread.
    let (status, _, ready) = lumina.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    let threads = threads(lumina.pid().unwrap());
    let nice_of = |prefix: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| *nice)
            .collect()
    };
    let all = |nices: &[i64], nice: i64| !nices.is_empty() && nices.iter().all(|n| *n == nice);
    // The thread and its runtime's blocking threads (reading the log).
    assert!(all(&nice_of("lumina-consumer"), 7), "{threads:?}");
    assert!(all(&nice_of("tokio-rt-worker"), 0), "{threads:?}");
    // The consumers' own SQLite connections inherit the thread's priority; the gateway's
    // (key lookups, reads) keep the process's.
    let sqlite = nice_of("sqlx-sqlite");
    assert!(sqlite.contains(&7) && sqlite.contains(&0), "{threads:?}");
}

#[tokio::test]
async fn the_admin_cli_drives_the_admin_api() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start(&data, &out, &[]).await;
    let data_dir = data.to_str().unwrap();
    let base = ["--url", lumina.url.as_str(), "--data-dir", data_dir];
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&base);
        let (ok, stdout, stderr) = run(&all, &[]);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let account = cli(&[
        "accounts",
        "create",
        "--name",
        "CLI Co",
        "--credits",
        "7.25",
    ]);
    let id = account["id"].as_str().unwrap();
    assert_eq!(account["credits_granted"], "7.25");
    let key = cli(&[
        "keys",
        "create",
        "--account",
        id,
        "--name",
        "cli",
        "--rpm",
        "30",
    ]);
    assert_eq!(key["rpm"], 30);
    let secret = key["key"].as_str().unwrap();
    assert_eq!(models_status(&lumina, Some(secret)).await.0, 200);
    let list = cli(&["keys", "list", "--account", id]);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    cli(&["keys", "revoke", key["id"].as_str().unwrap()]);
    assert_eq!(models_status(&lumina, Some(secret)).await.0, 403);
    let granted = cli(&["accounts", "grant", id, "--amount", "0.75"]);
    assert_eq!(granted["account"]["credits_granted"], "8");
    // Errors come back as a failing exit with the API's message.
    let (ok, _, stderr) = run(
        &[
            "accounts",
            "show",
            "acct_missing",
            "--url",
            &lumina.url,
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("404") && stderr.contains("acct_missing"),
        "{stderr}"
    );
}

#[test]
fn a_bad_configuration_fails_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[log]\nfsync = \"sometimes\"\n", "sometimes"),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = { fast = \"m\", balanced = \"m\", reasoning = \"m\" }\n[routes.fast]\nproviders = [\"b\"]\n",
            "routes.fast.providers",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\napi_key_env = \"LUMINA_TEST_UNSET_KEY\"\nmodels = { fast = \"m\", balanced = \"m\", reasoning = \"m\" }\n",
            "providers[0].api_key_env",
        ),
        ("[[providers]]\nname = \"a\"\nkind = \"gemini\"\n", "gemini"),
        ("lsiten = \"127.0.0.1:1\"\n", "lsiten"),
        ("[consumers]\nnice = 20\n", "consumers.nice"),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let data = tmp.path().join(format!("data{i}"));
        let (ok, _, stderr) = run(
            &[
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        assert!(!ok, "{text} was accepted");
        assert!(
            stderr.contains(expected),
            "{expected} not named in: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_flood_of_unknown_keys_gets_401s_on_kept_connections_and_few_lookups() {
    let (_tmp, data, out) = dirs();
    let lumina = Lumina::start(&data, &out, &[]).await;
    let before = lumina.metric("lumina_auth_key_lookups_total").await;
    let started = std::time::Instant::now();
    let url = format!("{}/v1/chat/completions", lumina.url);
    // A prompt large enough that it is still arriving when the 401 is ready.
    let prompt = "words ".repeat(8_000);
    let body = axum::body::Bytes::from(
        json!({"model": "lumina-fast", "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
    );
    let mut clients = Vec::new();
    for _ in 0..16 {
        // One keep-alive connection per client, reused for each of its requests.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let (url, body) = (url.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::new();
            for _ in 0..313 {
                let key = format!("lum_{}", hex_of(rand::random::<[u8; 24]>()));
                let res = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let status = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.bytes().await.unwrap();
                        status.to_string()
                    }
                    Err(e) => format!("dropped: {e}"),
                };
                *statuses.entry(status).or_insert(0u32) += 1;
            }
            statuses
        }));
    }
    let mut all = std::collections::BTreeMap::new();
    for c in clients {
        for (status, n) in c.await.unwrap() {
            *all.entry(status).or_insert(0u32) += n;
        }
    }
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all.get("401"), Some(&(16 * 313)), "{all:?}");
    let lookups = lumina.metric("lumina_auth_key_lookups_total").await - before;
    let seconds = started.elapsed().as_secs_f64().ceil();
    assert!(
        lookups <= 50.0 * (seconds + 1.0),
        "{lookups} lookups in {seconds} s"
    );
    // A key issued meanwhile still works on its first request.
    let account = lumina.account("After Flood", "1").await;
    let (_, key) = lumina.key(&account).await;
    assert_eq!(models_status(&lumina, Some(&key)).await.0, 200);
}

fn hex_of(bytes: [u8; 24]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
