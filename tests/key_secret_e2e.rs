//! No silent split brain on keys: a distributed gateway without `auth.key_secret` refuses to
//! start, and so does any gateway whose secret differs from the one the others on its database
//! use (its fingerprint is recorded in the database by the first to start), each naming
//! `auth.key_secret` — instead of starting and refusing every key the others issued.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Lumina, run, user};
use lumina_eventlog::Backend;

#[tokio::test]
async fn gateways_refuse_to_start_without_the_shared_key_secret_or_with_another_one() {
    let db = lumina_testkit::fresh_database(Backend::Postgres).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[database]\nurl = \"{}\"\n\n[kafka]\nbrokers = \"127.0.0.1:1\"\n",
        db.url
    );
    let config_path = tmp.path().join("lumina.toml");
    std::fs::write(&config_path, &config).unwrap();
    let refused = |data: &str, env: &[(&str, &str)]| {
        let dir = tmp.path().join(data);
        let (ok, stdout, stderr) = run(
            &[
                "gateway",
                "--config",
                config_path.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            env,
        );
        assert!(!ok, "the gateway started:\n{stdout}\n{stderr}");
        assert!(stderr.contains("auth.key_secret"), "{stderr}");
        assert!(
            !dir.join("key_secret").exists(),
            "no secret of its own is generated"
        );
        stderr
    };
    let stderr = refused("no-secret", &[]);
    assert!(stderr.contains("every gateway"), "{stderr}");

    // A first process on the database (embedded here, so it serves on its own) records its
    // secret's fingerprint.
    let secret_a = "ab".repeat(32);
    let embedded = format!("[database]\nurl = \"{}\"\n", db.url);
    let mut first = Lumina::start_with_config(
        &tmp.path().join("g1"),
        &tmp.path().join("g1-out"),
        &[("LUMINA_KEY_SECRET", secret_a.as_str())],
        Some(&embedded),
    )
    .await;
    let account = first.account("Shared", "1").await;
    let (_, key) = first.key(&account).await;
    let (status, _, _) = first.chat(&key, &user("lumina-fast", "hi")).await;
    assert_eq!(status, 200);

    // Another secret on the same database: refused, naming the setting; the recorded
    // fingerprint is not the secret.
    let secret_b = "cd".repeat(32);
    let stderr = refused("other-secret", &[("LUMINA_KEY_SECRET", secret_b.as_str())]);
    assert!(stderr.contains("differs"), "{stderr}");
    assert!(!stderr.contains(&secret_a) && !stderr.contains(&secret_b));
    first.stop().await;
    let stderr = refused(
        "other-secret-again",
        &[("LUMINA_KEY_SECRET", secret_b.as_str())],
    );
    assert!(
        stderr.contains("differs"),
        "refused with the first one down too: {stderr}"
    );
    let (ok, _, stderr) = run(
        &[
            "serve",
            "--config",
            tmp.path().join("g1-out/lumina.toml").to_str().unwrap(),
            "--data-dir",
            tmp.path().join("embedded-b").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("LUMINA_KEY_SECRET", secret_b.as_str())],
    );
    assert!(!ok && stderr.contains("auth.key_secret"), "{stderr}");

    // The same secret starts again, past the recorded fingerprint, and knows its keys.
    first.restart().await;
    let (status, _, text) = first
        .request(reqwest::Method::GET, "/v1/models", Some(&key), None)
        .await;
    assert_eq!(status, 200, "{text}");
}
