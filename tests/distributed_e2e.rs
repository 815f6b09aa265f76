//! Distributed mode against real services: Apache Kafka (KRaft, one node) and PostgreSQL, two
//! `lumina gateway`s, one `lumina ledger` and one `lumina projector`, each its own process.
//!
//! One scripted run: a key issued through one gateway works on the other at once; the broker is
//! killed while both gateways keep serving paid requests, then restarted; a gateway is killed
//! with unshipped events in its local log; the ledger and the projector are killed under load;
//! a corrupted message is put on the topic. At the end every event of both gateways' logs is
//! applied exactly once by each consumer, every client's `usage.cost` equals its ledger charge,
//! usage and balances agree, one account's events kept their order on the topic, and the
//! corrupted message is in the dead letters and on the DLQ topic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::dist::{Broker, ConsumerProc};
use common::{Lumina, run};
use lumina_eventlog::Backend;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

const ADMIN_KEY: &str = "dist-admin-key-0123456789abcdef";
const TOPIC: &str = "lumina.events";
const PARTITIONS: i32 = 3;

/// `"0.0000392"` → 39_200 nano-credits.
fn nano(decimal: &str) -> i64 {
    let (whole, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

struct Paid {
    request_id: String,
    cost_nano: i64,
}

/// `n` non-streaming requests (and one stream) on `gateway`; every one must succeed.
async fn burst(gateway: &Lumina, key: &str, n: usize, tag: &str) -> Vec<Paid> {
    let mut paid = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"model": "lumina-fast", "max_tokens": 16,
            "messages": [{"role": "user", "content": format!("{tag} {i}")}]});
        let (code, headers, text) = gateway.chat(key, &body).await;
        assert_eq!(code, 200, "{tag} {i}: {text}");
        paid.push(Paid {
            request_id: headers["x-request-id"].to_str().unwrap().to_string(),
            cost_nano: nano(headers["x-lumina-cost"].to_str().unwrap()),
        });
    }
    let stream = json!({"model": "lumina-balanced", "stream": true, "max_tokens": 16,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("{tag} stream")}]});
    let (code, _, text) = gateway.chat(key, &stream).await;
    assert_eq!(code, 200, "{tag} stream: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    paid
}

/// Both gateways' local logs, as JSON lines (with `position`).
fn local_log(gateway: &Lumina) -> Vec<Value> {
    let dir = gateway.data_dir.to_str().unwrap();
    let (ok, out, err) = run(&["replay", "--data-dir", dir], &[]);
    assert!(ok, "replay failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ledger_handles(t: &str) -> bool {
    matches!(
        t,
        "CreditsGranted" | "RequestRouted" | "RequestSettled" | "HoldExpired"
    )
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

/// Polls `sql` (one integer) until it returns `expected`; fails after 60 s saying `what`.
async fn wait_for_scalar(pool: &sqlx::AnyPool, sql: &str, expected: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = scalar(pool, sql).await;
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {value} of {expected} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requires `consumer` to have applied exactly the events `wanted`, each once.
async fn assert_applied_once(pool: &sqlx::AnyPool, consumer: &str, wanted: &BTreeSet<&str>) {
    let applied: Vec<String> =
        sqlx::query("SELECT event_id FROM consumer_applied_events WHERE consumer = $1")
            .bind(consumer)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
    let applied_set: BTreeSet<&str> = applied.iter().map(String::as_str).collect();
    assert_eq!(
        applied_set.len(),
        applied.len(),
        "{consumer}: an event applied twice"
    );
    assert_eq!(
        &applied_set, wanted,
        "{consumer}: applied events differ from the gateways' logs"
    );
}

/// `lumina reconcile` against the topic reports a clean journal.
fn assert_reconciles(config_path: &std::path::Path) {
    let (ok, out, err) = run(
        &[
            "reconcile",
            "--config",
            config_path.to_str().unwrap(),
            "--wait",
            "30",
        ],
        &[],
    );
    assert!(ok, "reconcile failed:\n{out}\n{err}");
    assert!(out.contains("reconcile: clean"), "{out}");
}

/// A message read back: partition, payload, headers.
type TopicMessage = (i32, Vec<u8>, Vec<(String, String)>);

/// Every message on `topic`, read from the beginning of each partition until `expected` came
/// (or 30 s passed).
fn read_topic(brokers: &str, topic: &str, partitions: i32, expected: usize) -> Vec<TopicMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let headers = m
                .headers()
                .map(|h| {
                    use rdkafka::message::Headers;
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    out
}

/// Kafka, PostgreSQL, a ledger, a projector and `gateways` gateways, all on one configuration.
struct Cluster {
    tmp: tempfile::TempDir,
    broker: Broker,
    db: lumina_testkit::TestDb,
    config_path: std::path::PathBuf,
    ledger: ConsumerProc,
    projector: ConsumerProc,
    gateways: Vec<Lumina>,
    pool: sqlx::AnyPool,
}

impl Cluster {
    /// Starts everything; `extra` is appended to the shared configuration.
    async fn start(gateways: usize, assignment: &str, extra: &str) -> Cluster {
        lumina_gateway::providers::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let broker = Broker::start(&tmp.path().join("kafka")).await;
        let db = lumina_testkit::fresh_database(Backend::Postgres).await;
        let config = format!(
            "[database]\nurl = \"{}\"\n\n[kafka]\nbrokers = \"{}\"\npartitions = {PARTITIONS}\nassignment = \"{assignment}\"\n{extra}",
            db.url, broker.address
        );
        let config_path = tmp.path().join("lumina.toml");
        std::fs::write(&config_path, &config).unwrap();
        let ledger = ConsumerProc::start("ledger", &config_path, &tmp.path().join("ledger"));
        let projector =
            ConsumerProc::start("projector", &config_path, &tmp.path().join("projector"));
        let secret = "cd".repeat(32);
        let env = [
            ("LUMINA_ADMIN_KEY", ADMIN_KEY),
            ("LUMINA_KEY_SECRET", secret.as_str()),
        ];
        let mut started = Vec::with_capacity(gateways);
        for g in 1..=gateways {
            started.push(
                Lumina::start_gateway(
                    &tmp.path().join(format!("g{g}")),
                    &tmp.path().join(format!("g{g}-out")),
                    &env,
                    &config,
                )
                .await,
            );
        }
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        Cluster {
            tmp,
            broker,
            db,
            config_path,
            ledger,
            projector,
            gateways: started,
            pool,
        }
    }
}

/// A gauge's value in `gateway`'s `/metrics`.
async fn gauge(gateway: &Lumina, name: &str) -> f64 {
    let metrics = reqwest::get(format!("{}/metrics", gateway.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_mode_delivers_every_event_once_through_outages_and_kills() {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let Cluster {
        tmp,
        mut broker,
        db: _db,
        config_path,
        mut ledger,
        mut projector,
        mut gateways,
        pool,
    } = Cluster::start(2, "group", "").await;
    let g2 = gateways.pop().unwrap();
    let mut g1 = gateways.pop().unwrap();

    // A key issued through the first gateway works on the second at once.
    let account = g1.account("Distributed Co", "1000").await;
    let (_, key) = g1.key(&account).await;
    let mut paid = burst(&g2, &key, 3, "first").await;

    paid.extend(burst(&g1, &key, 20, "g1").await);
    paid.extend(burst(&g2, &key, 20, "g2").await);

    // Broker outage: both gateways keep serving paid requests; the backlog shows it.
    broker.kill9();
    paid.extend(burst(&g1, &key, 15, "outage-1").await);
    paid.extend(burst(&g2, &key, 15, "outage-2").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let backlog = gauge(&g1, "lumina_shipper_backlog_events").await;
    assert!(
        backlog >= 15.0,
        "the backlog shows the unshipped events: {backlog}"
    );
    broker.restart().await;

    // A gateway killed while its local log holds events the broker never got.
    broker.kill9();
    paid.extend(burst(&g1, &key, 10, "unshipped").await);
    g1.kill9();
    broker.restart().await;
    g1.restart().await;

    // The ledger and the projector killed under load at random moments, one after the other.
    for round in 0..4 {
        let pause = Duration::from_millis(rand::random_range(20..400));
        let tag = format!("load-{round}");
        let (batch, ()) = tokio::join!(burst(&g2, &key, 12, &tag), async {
            tokio::time::sleep(pause).await;
            match round {
                0 => ledger.kill9(),
                1 => ledger.restart(),
                2 => projector.kill9(),
                _ => projector.restart(),
            }
        });
        paid.extend(batch);
    }

    // A corrupted message on the topic, then more traffic behind it.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(TOPIC)
                .key(account.as_str())
                .payload(&b"\xC3\x01not an event"[..]),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    paid.extend(burst(&g1, &key, 3, "after-corrupt").await);

    // Every event of both local logs, by id.
    let mut events: Vec<Value> = local_log(&g1);
    events.extend(local_log(&g2));
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "event ids are unique across gateways"
    );
    let ledger_ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| ledger_handles(e["event_type"].as_str().unwrap()))
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let settlements = events
        .iter()
        .filter(|e| e["event_type"] == "RequestSettled")
        .count() as i64;

    // Wait for both consumers to apply everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = scalar(
            &pool,
            "SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = 'ledger'",
        )
        .await;
        let p = scalar(
            &pool,
            "SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = 'projector'",
        )
        .await;
        let settled = scalar(
            &pool,
            "SELECT COUNT(*) FROM requests WHERE outcome IS NOT NULL",
        )
        .await;
        let dead = scalar(
            &pool,
            "SELECT COUNT(*) FROM dead_letters WHERE stream = 'lumina.events'",
        )
        .await;
        if l == ledger_ids.len() as i64
            && p == ids.len() as i64
            && settled == settlements
            && dead == 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything arrived: ledger {l}/{}, projector {p}/{}, settled {settled}/{settlements}, dead letters {dead}/2\n--- ledger\n{}\n--- projector\n{}",
            ledger_ids.len(),
            ids.len(),
            ledger.output(),
            projector.output()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Exactly the gateways' events, each once, in each consumer.
    for (consumer, wanted) in [("ledger", &ledger_ids), ("projector", &ids)] {
        assert_applied_once(&pool, consumer, wanted).await;
    }

    // Every client's cost is its ledger charge.
    let charges: HashMap<String, i64> =
        sqlx::query("SELECT request_id, charged_nano FROM ledger_entries WHERE kind = 'settle'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect();
    assert_eq!(charges.len() as i64, settlements);
    for p in &paid {
        assert_eq!(
            charges.get(&p.request_id),
            Some(&p.cost_nano),
            "request {} was told {} nano",
            p.request_id,
            p.cost_nano
        );
    }
    let charged: i64 = charges.values().sum();

    // Balances, usage and the account agree.
    let acct = g2
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}"),
            None,
            200,
        )
        .await;
    let b = &acct["balance"];
    assert_eq!(b["spent_nano"], json!(charged));
    assert_eq!(b["held_nano"], json!(0));
    assert_eq!(
        b["available_nano"].as_i64().unwrap() + charged,
        b["granted_nano"].as_i64().unwrap()
    );
    let (code, _, usage) = g1
        .request(
            Method::GET,
            &format!("/v1/usage?start_time={}&bucket_width=1h", started - 60),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(code, 200, "{usage}");
    let usage_nano: i64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap().clone())
        .map(|r| r["credits_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(usage_nano, charged, "usage credits equal the ledger's");

    // The corrupted message: dead-lettered by both consumers, copied to the DLQ topic.
    assert_eq!(
        scalar(
            &pool,
            "SELECT COUNT(*) FROM dead_letters WHERE stream = 'lumina.events'"
        )
        .await,
        2
    );
    let dlq = read_topic(&broker.address, "lumina.events.dlq", 1, 2);
    assert_eq!(dlq.len(), 2, "both consumers copy the message to the DLQ");
    for (_, payload, headers) in &dlq {
        assert_eq!(payload.as_slice(), &b"\xC3\x01not an event"[..]);
        assert!(headers.iter().any(|(k, v)| k == "reason" && !v.is_empty()));
    }

    // One account's events keep each gateway's order on the topic (resends aside).
    let on_topic = read_topic(&broker.address, TOPIC, PARTITIONS, events.len() + 1);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut order: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (_, payload, _) in &on_topic {
        let Ok(decoded) = lumina_schemas::decode(payload) else {
            continue;
        };
        let env = decoded.event.envelope;
        let id = env.event_id.to_string();
        if seen.insert(id.clone()) {
            order
                .entry((env.account_id, env.gateway_instance))
                .or_default()
                .push(id);
        }
    }
    assert_eq!(seen.len(), ids.len(), "every event reached the topic");
    for gateway_events in [local_log(&g1), local_log(&g2)] {
        let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for e in gateway_events {
            expected
                .entry((
                    e["account_id"].as_str().unwrap().to_string(),
                    e["gateway_instance"].as_str().unwrap().to_string(),
                ))
                .or_default()
                .push(e["event_id"].as_str().unwrap().to_string());
        }
        for (k, ids) in expected {
            assert_eq!(order.get(&k), Some(&ids), "order of {k:?} on the topic");
        }
    }

    // The journal reconciles against the topic.
    assert_reconciles(&config_path);

    // For data teams: the topic replayed as JSON lines, one per event; and a live tail.
    let (ok, out, err) = run(&["replay", "--config", config_path.to_str().unwrap()], &[]);
    assert!(ok, "replay failed: {err}");
    let replayed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let replayed_ids: BTreeSet<&str> = replayed
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(replayed.len(), ids.len(), "one line per event");
    assert_eq!(replayed_ids, ids);
    let (ok, out, _) = run(
        &[
            "replay",
            "--config",
            config_path.to_str().unwrap(),
            "--type",
            "RequestSettled",
            "--account",
            &account,
        ],
        &[],
    );
    assert!(ok);
    assert_eq!(out.lines().count() as i64, settlements);

    // The same as Avro container files, read back with nothing but the schemas in schemas/.
    let avro_dir = tmp.path().join("avro");
    let (ok, _, err) = run(
        &[
            "replay",
            "--config",
            config_path.to_str().unwrap(),
            "--format",
            "avro",
            "--out",
            avro_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "avro replay failed: {err}");
    let mut avro_ids: BTreeSet<String> = BTreeSet::new();
    for file in std::fs::read_dir(&avro_dir).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap();
        let snake: String = name
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let lower = c.to_ascii_lowercase();
                if c.is_ascii_uppercase() && i > 0 {
                    vec!['_', lower]
                } else {
                    vec![lower]
                }
            })
            .collect();
        let schema_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/avro")
            .join(&snake);
        let newest = std::fs::read_dir(&schema_dir)
            .unwrap_or_else(|e| panic!("{}: {e}", schema_dir.display()))
            .map(|f| f.unwrap().path())
            .max()
            .unwrap();
        let schema =
            apache_avro::Schema::parse_str(&std::fs::read_to_string(&newest).unwrap()).unwrap();
        let reader = apache_avro::Reader::builder(std::fs::File::open(&path).unwrap())
            .reader_schema(&schema)
            .build()
            .unwrap();
        for record in reader {
            let apache_avro::types::Value::Record(fields) = record.unwrap() else {
                panic!("{name}: not a record");
            };
            let id = fields
                .iter()
                .find(|(k, _)| k == "event_id")
                .map(|(_, v)| match v {
                    apache_avro::types::Value::String(s) => s.clone(),
                    apache_avro::types::Value::Uuid(u) => u.to_string(),
                    other => panic!("event_id is {other:?}"),
                })
                .unwrap();
            assert!(avro_ids.insert(id), "{name}: an event twice");
        }
    }
    let avro_ids: BTreeSet<&str> = avro_ids.iter().map(String::as_str).collect();
    assert_eq!(avro_ids, ids, "the Avro files hold every event once");

    let mut tail = std::process::Command::new(common::bin())
        .args(["events", "tail", "--config", config_path.to_str().unwrap()])
        .args(["--type", "RequestSettled"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut live = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.is_none() && Instant::now() < deadline {
        let fresh = burst(&g2, &key, 1, "tail").await;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["request_id"] == json!(fresh[0].request_id) {
                live = Some(v);
                break;
            }
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let live = live.expect("events tail never printed a fresh settlement");
    assert_eq!(live["event_type"], "RequestSettled");
    drop(g1);
    drop(g2);
}

/// SIGTERM to the gateway, the ledger and the projector at once; requires each to exit within
/// 5 s.
async fn terminate_promptly(
    gateway: &mut Lumina,
    ledger: &mut ConsumerProc,
    projector: &mut ConsumerProc,
    broker_state: &str,
) {
    let limit = Duration::from_secs(5);
    let (g, l, p) = tokio::join!(
        gateway.terminate(),
        ledger.terminate(),
        projector.terminate()
    );
    for (took, what, output) in [
        (g, "gateway", gateway.output()),
        (l, "ledger", ledger.output()),
        (p, "projector", projector.output()),
    ] {
        assert!(
            took < limit,
            "with the broker {broker_state}, the {what} took {took:?} to exit on SIGTERM:\n{output}"
        );
    }
}

/// Restarts the three processes and waits until each consumer applied every event of the
/// gateway's log, once.
async fn restart_and_apply_everything_once(
    gateway: &mut Lumina,
    ledger: &mut ConsumerProc,
    projector: &mut ConsumerProc,
    pool: &sqlx::AnyPool,
) {
    gateway.restart().await;
    ledger.restart();
    projector.restart();
    let events = local_log(gateway);
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let ledger_ids: BTreeSet<&str> = events
        .iter()
        .filter(|e| ledger_handles(e["event_type"].as_str().unwrap()))
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    for (consumer, wanted) in [("projector", &ids), ("ledger", &ledger_ids)] {
        wait_for_scalar(
            pool,
            &format!("SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = '{consumer}'"),
            wanted.len() as i64,
            &format!("{consumer}: applied after the restart"),
        )
        .await;
        assert_applied_once(pool, consumer, wanted).await;
    }
}

/// Requests on `gateway` with the broker away, until its shipper reports them as backlog.
async fn pile_up_backlog(gateway: &Lumina, key: &str, tag: &str) {
    burst(gateway, key, 20, tag).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge(gateway, "lumina_shipper_backlog_events").await < 40.0 {
        assert!(
            Instant::now() < deadline,
            "{tag}: no backlog behind the broker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stopping is prompt whatever the broker's state: with the broker stopped, and then with it
/// frozen (connections open, nothing answering, as behind a partition), and a backlog in the
/// gateway's local log each time, SIGTERM ends the gateway, the ledger and the projector within
/// 5 s each; once the broker is back and they restart, every event arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_exit_within_five_seconds_of_sigterm_while_the_broker_is_away() {
    let Cluster {
        tmp: _tmp,
        mut broker,
        db: _db,
        config_path: _,
        mut ledger,
        mut projector,
        mut gateways,
        pool,
    } = Cluster::start(1, "group", "").await;
    let gateway = &mut gateways[0];
    let account = gateway.account("Prompt Co", "1000").await;
    let (_, key) = gateway.key(&account).await;
    burst(gateway, &key, 5, "before").await;
    let before = local_log(gateway).len() as i64;
    wait_for_scalar(
        &pool,
        "SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = 'projector'",
        before,
        "applied before the outage",
    )
    .await;

    broker.stop().await;
    pile_up_backlog(gateway, &key, "stopped").await;
    terminate_promptly(gateway, &mut ledger, &mut projector, "stopped").await;
    broker.restart().await;
    restart_and_apply_everything_once(gateway, &mut ledger, &mut projector, &pool).await;

    broker.freeze();
    pile_up_backlog(gateway, &key, "frozen").await;
    terminate_promptly(gateway, &mut ledger, &mut projector, "frozen").await;
    broker.thaw();
    restart_and_apply_everything_once(gateway, &mut ledger, &mut projector, &pool).await;
}

/// In distributed mode the ledger's positions are topic offsets; a gateway must still learn
/// that the ledger's balances carry its holds, or every hold it ever placed would stay counted
/// against the account (false 402s, and a book that grows forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_releases_its_holds_once_the_ledger_applied_them() {
    let cluster = Cluster::start(1, "all", "").await;
    let (gateway, pool) = (&cluster.gateways[0], &cluster.pool);
    // Room for three holds of ~0.00144 credits (1,800 tokens at 0.8 per million) and the
    // fifteen charges of ~0.00004, not for six holds.
    let account = gateway.account("Holds Co", "0.005").await;
    let (_, key) = gateway.key(&account).await;
    let body = |i: usize| {
        json!({"model": "lumina-fast", "max_tokens": 1800,
            "messages": [{"role": "user", "content": format!("round {i}")}]})
    };

    // Five rounds of three requests: fifteen holds, five times what the account could hold at
    // once, while the charges stay far below it.
    let mut spent = 0;
    for round in 0..5 {
        for i in 0..3 {
            let (code, headers, text) = gateway.chat(&key, &body(round * 3 + i)).await;
            assert_eq!(code, 200, "round {round}, request {i}: {text}");
            spent += nano(headers["x-lumina-cost"].to_str().unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while gauge(gateway, "lumina_credit_pending_holds").await > 0.0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the gateway still counts holds the ledger applied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let held = scalar(
        pool,
        &format!("SELECT held_nano FROM ledger_balances WHERE account_id = '{account}'"),
    )
    .await;
    let available = scalar(
        pool,
        &format!("SELECT available_nano FROM ledger_balances WHERE account_id = '{account}'"),
    )
    .await;
    assert_eq!(held, 0);
    assert_eq!(available, 5_000_000 - spent);
}

/// Waits until `ledgers` hold every partition between them, each holding at least one when
/// `each` is set, and returns what each holds.
async fn wait_for_split(ledgers: &[&ConsumerProc], each: bool) -> Vec<BTreeSet<i32>> {
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held: Vec<BTreeSet<i32>> = ledgers.iter().map(|l| l.partitions()).collect();
        let union: BTreeSet<i32> = held.iter().flatten().copied().collect();
        let disjoint = held.iter().map(BTreeSet::len).sum::<usize>() == union.len();
        if union == all && disjoint && (!each || held.iter().all(|h| !h.is_empty())) {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "the group never settled: {held:?}\n{}",
            ledgers
                .iter()
                .map(|l| l.output())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests from every key on `gateway`; then waits until the ledger journaled every
/// settlement the gateway's log holds.
async fn pay_and_settle(gateway: &Lumina, keys: &[String], tag: &str, pool: &sqlx::AnyPool) {
    for key in keys {
        burst(gateway, key, 3, tag).await;
    }
    let settlements = local_log(gateway)
        .iter()
        .filter(|e| e["event_type"] == "RequestSettled")
        .count() as i64;
    wait_for_scalar(
        pool,
        "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle'",
        settlements,
        &format!("{tag}: settlements journaled"),
    )
    .await;
}

/// Whether `member`'s latest join made it its group's leader (from librdkafka's `cgrp` debug
/// log: "JoinGroup response: … LeaderId X[ (me)], my MemberId Y, …").
fn leads_its_group(member: &ConsumerProc) -> bool {
    let output = member.output();
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains("JoinGroup response:") && l.contains("(no error)"))
        .unwrap_or_else(|| panic!("no successful JoinGroup in:\n{output}"));
    let field = |name: &str| {
        line.split_once(name)
            .and_then(|(_, rest)| rest.split(',').next())
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    field("LeaderId ").trim_end_matches(" (me)") == field("my MemberId ")
}

/// `assignment = "group"`: two ledgers in one consumer group split the partitions, one that
/// leaves hands its partitions to the other and takes its share back when it returns, the
/// group's leader killed with SIGKILL loses its partitions to the other once its session times
/// out (the survivor becomes the leader of the next generation), and every money event is
/// journaled exactly once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_in_a_group_split_the_partitions_and_take_over_from_each_other() {
    let Cluster {
        tmp,
        broker: _broker,
        db,
        config_path,
        mut ledger,
        projector: _projector,
        gateways,
        pool,
    } = Cluster::start(1, "group", "[kafka.settings]\ndebug = \"cgrp\"\n").await;
    let gateway = &gateways[0];
    // Two ledgers that log their group's joins.
    ledger.stop();
    let debug = [("LUMINA_LOG", "info,librdkafka=debug")];
    let start = |name: &str| {
        ConsumerProc::start_with_env("ledger", &config_path, &tmp.path().join(name), &debug)
    };
    let (mut first, mut second) = (start("ledger-1"), start("ledger-2"));
    wait_for_split(&[&first, &second], true).await;

    // Several accounts, so the traffic spreads over the partitions.
    let mut keys = Vec::new();
    for i in 0..6 {
        let account = gateway.account(&format!("Group {i}"), "100").await;
        keys.push(gateway.key(&account).await.1);
    }
    pay_and_settle(gateway, &keys, "split", &pool).await;

    // A member that leaves hands its partitions over.
    second.stop();
    wait_for_split(&[&first], false).await;
    pay_and_settle(gateway, &keys, "alone", &pool).await;

    // It rejoins and takes its share again.
    second.restart();
    wait_for_split(&[&first, &second], true).await;
    pay_and_settle(gateway, &keys, "rejoined", &pool).await;

    // The leader killed without leaving: the other takes everything after the session timeout.
    let (victim, survivor) = if leads_its_group(&first) {
        (&mut first, &second)
    } else {
        (&mut second, &first)
    };
    assert!(leads_its_group(victim) && !leads_its_group(survivor));
    victim.kill9();
    let traffic = pay_and_settle(gateway, &keys, "after-kill", &pool);
    let survivor = [survivor];
    let (_, held) = tokio::join!(traffic, wait_for_split(&survivor, false));
    assert_eq!(held[0].len(), PARTITIONS as usize);
    assert!(
        leads_its_group(survivor[0]),
        "the survivor leads the next generation"
    );

    // Every money event of the gateway's log journaled once.
    let events = local_log(gateway);
    let wanted: BTreeSet<&str> = events
        .iter()
        .filter(|e| ledger_handles(e["event_type"].as_str().unwrap()))
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_applied_once(&pool, "ledger", &wanted).await;
    assert_reconciles(&config_path);
    // `--once` on the topic: a ledger on an empty database reads every partition to its end as
    // of its start, then exits, with the same balances.
    first.stop();
    second.stop();
    let fresh = lumina_testkit::fresh_database(Backend::Postgres).await;
    let once_config = tmp.path().join("once.toml");
    std::fs::write(
        &once_config,
        std::fs::read_to_string(&config_path)
            .unwrap()
            .replace(&db.url, &fresh.url),
    )
    .unwrap();
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(common::bin())
        .args([
            "ledger",
            "--once",
            "--config",
            once_config.to_str().unwrap(),
        ])
        .env_remove("LUMINA_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ledger --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let balances = "SELECT account_id || ' ' || available_nano || ' ' || held_nano || ' ' || spent_nano \
                    FROM ledger_balances ORDER BY account_id";
    let rows = |pool: sqlx::AnyPool| async move {
        sqlx::query(balances)
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
    };
    let once_pool = sqlx::AnyPool::connect(&fresh.url).await.unwrap();
    assert_eq!(rows(once_pool).await, rows(pool.clone()).await);
}

/// Several gateways place holds against one balance, each seeing the others' holds only once
/// the ledger applied them. Each gateway never holds more than the balance it sees, so the
/// holds outstanding at once never exceed (gateways − 1) × the balance beyond it; once the
/// balance is spent, every gateway refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_across_gateways_stay_within_the_overspend_bound() {
    // Output at 1,000 credits per million tokens and free input: a 40-token answer is charged
    // exactly its hold, 0.04 credits, so the balance holds ten of them.
    let pricing = "headers = true\n[pricing.paths.fast]\ninput = \"0\"\noutput = \"1000\"\n";
    let cluster = Cluster::start(2, "all", pricing).await;
    let (gateways, pool) = (&cluster.gateways, &cluster.pool);
    // An account opened through one gateway has its credit on the other at once, not only
    // after that gateway's next refresh.
    for i in 0..5 {
        let account = gateways[0].account(&format!("Fresh {i}"), "1").await;
        let (_, key) = gateways[0].key(&account).await;
        let body = json!({"model": "lumina-fast", "max_tokens": 40,
            "messages": [{"role": "user", "content": "first"}]});
        let (code, _, text) = gateways[1].chat(&key, &body).await;
        assert_eq!(code, 200, "fresh account {i} on the other gateway: {text}");
    }

    let granted: i64 = 400_000_000;
    let account = gateways[0].account("Contended Co", "0.4").await;
    let (_, key) = gateways[0].key(&account).await;
    let body = json!({"model": "lumina-fast", "max_tokens": 40,
        "messages": [{"role": "user", "content": "spend"}]});

    // Three clients per gateway, each until its first 402.
    let client = |g: usize| {
        let (gateway, key, body) = (&gateways[g], &key, &body);
        async move {
            let (mut paid, mut refused) = (0, 0);
            for _ in 0..40 {
                let (code, _, text) = gateway.chat(key, body).await;
                match code {
                    200 => paid += 1,
                    402 => {
                        refused += 1;
                        break;
                    }
                    _ => panic!("{code}: {text}"),
                }
            }
            (paid, refused)
        }
    };
    let results = futures::future::join_all((0..6).map(|i| client(i % 2))).await;
    let paid: i64 = results.iter().map(|r| r.0).sum();
    assert!(
        results.iter().all(|r| r.1 == 1),
        "every client ran out: {results:?}"
    );

    // Everything settled in the ledger.
    wait_for_scalar(
        pool,
        &format!(
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle' AND account_id = '{account}'"
        ),
        paid,
        "settlements journaled",
    )
    .await;
    let spent = scalar(
        pool,
        &format!("SELECT spent_nano FROM ledger_balances WHERE account_id = '{account}'"),
    )
    .await;
    assert_eq!(spent, paid * 40_000_000, "each charge equals its hold");

    // The deepest the balance went while holds were outstanding: never below −(gateways − 1)
    // × the balance.
    let lowest = scalar(
        pool,
        &format!(
            "SELECT MIN(running) FROM (
               SELECT CAST(SUM(p.amount_nano) OVER (ORDER BY e.id) AS BIGINT) AS running
               FROM ledger_entries e JOIN ledger_postings p ON p.entry_event_id = e.event_id
               WHERE e.account_id = '{account}' AND p.ledger_account = '{account}:available'
             ) t"
        ),
    )
    .await;
    let bound = (gateways.len() as i64 - 1) * granted;
    assert!(
        lowest >= -bound,
        "holds outstanding reached {} nano beyond the balance; the bound is {bound}",
        -lowest
    );
    assert!(spent <= granted + bound);

    // With `kafka.headers`, each message names its type and id in headers too.
    let on_topic = read_topic(&cluster.broker.address, TOPIC, PARTITIONS, 1);
    let (_, payload, headers) = &on_topic[0];
    let event = lumina_schemas::decode(payload).unwrap().event;
    let header = |k: &str| {
        headers
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("event_type").as_deref(),
        Some(event.event_type().as_str())
    );
    assert_eq!(
        header("event_id"),
        Some(event.envelope.event_id.to_string())
    );

    // Once spent, every gateway refuses.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for gateway in gateways {
        let (code, _, text) = gateway.chat(&key, &body).await;
        assert_eq!(code, 402, "{text}");
    }

    // A budget holds within the same bound: an account with plenty of credit, a key whose
    // `total` budget is 0.4 credits, three clients per gateway until their first 402, each a
    // `budget_exceeded`.
    let rich = gateways[0].account("Budgeted Co", "10").await;
    let (key_id, budgeted) = gateways[0].key(&rich).await;
    gateways[0]
        .admin(
            Method::POST,
            &format!("/admin/keys/{key_id}/budgets"),
            Some(json!({"limit": "0.4", "period": "total"})),
            201,
        )
        .await;
    // In force on the gateway that set it at once, on the other from its next credit refresh
    // (250 ms; waited for with room to spare on a loaded machine).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let client = |g: usize| {
        let (gateway, key, body) = (&gateways[g], &budgeted, &body);
        async move {
            let mut paid = 0;
            for _ in 0..40 {
                let (code, _, text) = gateway.chat(key, body).await;
                match code {
                    200 => paid += 1,
                    402 => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["error"]["code"], "budget_exceeded", "{text}");
                        return paid;
                    }
                    _ => panic!("{code}: {text}"),
                }
            }
            panic!("never refused")
        }
    };
    let paid: i64 = futures::future::join_all((0..6).map(|i| client(i % 2)))
        .await
        .into_iter()
        .sum();
    wait_for_scalar(
        pool,
        &format!(
            "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle' AND account_id = '{rich}'"
        ),
        paid,
        "budgeted settlements journaled",
    )
    .await;
    let spent = scalar(
        pool,
        &format!("SELECT spent_nano FROM ledger_balances WHERE account_id = '{rich}'"),
    )
    .await;
    assert!(paid >= 10, "the budget's ten requests got through: {paid}");
    assert!(
        spent <= granted + bound,
        "spent {spent} against a budget of {granted}; the bound is {bound}"
    );
}

/// A request whose recorded content is larger than Kafka's default message limit (1 MB) is
/// shipped like any other, and so is everything after it. With the producer limited to 1 MB
/// (`message.max.bytes` passed through), that one event is passed over and counted, and the
/// shipper goes on with the rest.
/// Sends a greeting to `lumina-auto` on `gateway` until it answers with policy `version`,
/// within a second of `since`; returns the path it took.
async fn policy_in_force(gateway: &Lumina, key: &str, version: &str, since: Instant) -> String {
    let body = json!({"model": "lumina-auto", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello to Ana."}]});
    loop {
        let (code, headers, text) = gateway.chat(key, &body).await;
        assert_eq!(code, 200, "{text}");
        if headers["x-lumina-policy"] == version {
            return headers["x-lumina-route"].to_str().unwrap().to_string();
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "policy {version} not in force on the other gateway after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A policy published through one gateway is in force on the other within a second (it reads
/// the active version from the shared database the projector writes), and so is a rollback
/// made through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_published_on_one_gateway_is_in_force_on_the_other_within_a_second() {
    let cluster = Cluster::start(2, "all", "").await;
    let g = &cluster.gateways;
    let account = g[0].account("Policy Co", "10").await;
    let (_, key) = g[0].key(&account).await;
    let shown = g[0]
        .admin(Method::GET, "/admin/policies/active", None, 200)
        .await;
    let shipped = shown["version"].to_string();
    assert_eq!(
        policy_in_force(&g[1], &key, &shipped, Instant::now()).await,
        "fast"
    );
    let mut doc = shown["policy"].clone();
    for (version, floor) in [(3, "balanced"), (4, "reasoning")] {
        doc["version"] = json!(version);
        doc["task_classes"] = json!({"chat": {"min_path": floor}});
        // Answers once the projector has applied it.
        g[0].admin(Method::POST, "/admin/policies", Some(doc.clone()), 201)
            .await;
        let path = policy_in_force(&g[1], &key, &version.to_string(), Instant::now()).await;
        assert_eq!(path, floor);
    }
    g[1].admin(Method::POST, "/admin/policies/3/activate", None, 200)
        .await;
    assert_eq!(
        policy_in_force(&g[0], &key, "3", Instant::now()).await,
        "balanced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_a_megabyte_is_shipped_and_the_shipper_goes_on() {
    for limited in [false, true] {
        let extra = if limited {
            "[kafka.settings]\n\"message.max.bytes\" = \"1000000\"\n"
        } else {
            ""
        };
        let cluster = Cluster::start(1, "all", extra).await;
        let (gateway, pool) = (&cluster.gateways[0], &cluster.pool);
        let account = gateway.account("Long Context Co", "1000").await;
        let (_, key) = gateway
            .key_with(&account, json!({"store_content": true}))
            .await;
        let prompt = "lorem ipsum ".repeat(150_000);
        let body = json!({"model": "lumina-fast", "max_tokens": 16,
            "messages": [{"role": "user", "content": prompt}]});
        let (code, _, text) = gateway.chat(&key, &body).await;
        assert_eq!(code, 200, "{text}");
        burst(gateway, &key, 3, "after").await;

        let events = local_log(gateway);
        let content = events
            .iter()
            .find(|e| e["event_type"] == "RequestContentRecorded")
            .expect("the content was recorded");
        assert!(content.to_string().len() > 1_800_000);
        let expected = events.len() as i64 - i64::from(limited);
        wait_for_scalar(
            pool,
            "SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = 'projector'",
            expected,
            &format!("limited {limited}: events the projector applied"),
        )
        .await;
        let passed_over = gauge(gateway, "lumina_shipper_oversized_events_total").await;
        assert_eq!(passed_over, f64::from(u8::from(limited)));
    }
}

const RESPONSES_ACROSS_GATEWAYS: &str = r#"
import sys, json, re, openai
from openai import OpenAI
a_url, b_url, key = sys.argv[1], sys.argv[2], sys.argv[3]
a = OpenAI(base_url=a_url + "/v1", api_key=key, max_retries=0)
b = OpenAI(base_url=b_url + "/v1", api_key=key, max_retries=0)
costs = []

def cost(text):
    found = re.findall(r'"cost":([0-9.]+)', text)
    assert len(found) == 1, text
    costs.append(found[0])

raw = a.responses.with_raw_response.create(model="lumina-fast", input="My name is Ada and I build gateways.")
first = raw.parse()
cost(raw.http_response.text)
# The very next turn, on the other gateway: the conversation is already there.
raw = b.responses.with_raw_response.create(model="lumina-fast", previous_response_id=first.id,
    input="What is my name?")
second = raw.parse()
cost(raw.http_response.text)
assert second.previous_response_id == first.id
assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens, (first.usage, second.usage)
# Streamed on the second gateway, then read back at once from the first.
final = None
for ev in b.responses.create(model="lumina-fast", previous_response_id=second.id, input="Once more?", stream=True):
    if ev.type == "response.completed":
        final = ev.response
got = a.responses.with_raw_response.retrieve(final.id)
cost(got.http_response.text)
assert got.parse().status == "completed" and got.parse().output_text == final.output_text
a.responses.delete(first.id)
try:
    b.responses.retrieve(first.id)
    raise SystemExit("a deleted response was still readable on the other gateway")
except openai.NotFoundError:
    pass
print(json.dumps({"costs": costs}))
"#;

/// The Responses API's conversation state is shared by the gateways: a turn continues on the
/// other gateway the moment the previous one completed, a stored response is read and deleted
/// from either, and each turn is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_conversation_continues_on_the_other_gateway_at_once() {
    let cluster = Cluster::start(2, "all", "").await;
    let g = &cluster.gateways;
    let account = g[0].account("Conversations", "10").await;
    let (_, key) = g[0].key(&account).await;
    let stdout = common::run_python(
        RESPONSES_ACROSS_GATEWAYS,
        vec![g[0].url.clone(), g[1].url.clone(), key],
    )
    .await;
    let told: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let total: i64 = told["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| nano(c.as_str().unwrap()))
        .sum();
    assert!(total > 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = g[0].balance(&account).await;
        if b["spent_nano"] == total && b["held_nano"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "spent {b} != told {total}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_scalar(
        &cluster.pool,
        "SELECT COUNT(*) FROM requests WHERE api = 'responses'",
        3,
        "the three turns in the request view",
    )
    .await;
}

/// A key's rpm holds across two gateways: its requests share one bucket in PostgreSQL, so
/// together they get the limit plus the refill while they run (and at most a second's refill
/// per gateway more), not twice the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_holds_across_gateways() {
    let cluster = Cluster::start(2, "all", "").await;
    let g = &cluster.gateways;
    let account = g[0].account("Limited Co", "10").await;
    let (_, key) = g[0].key_with(&account, json!({"rpm": 60})).await;
    let body = json!({"model": "lumina-fast", "max_tokens": 8,
        "messages": [{"role": "user", "content": "count me"}]});
    let started = Instant::now();
    let client = |i: usize| {
        let (gateway, key, body) = (&g[i % 2], &key, &body);
        async move {
            let (mut ok, mut limited) = (0i64, 0i64);
            for _ in 0..30 {
                let (code, headers, text) = gateway.chat(key, body).await;
                match code {
                    200 => ok += 1,
                    429 => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{text}");
                        assert_eq!(common::header(&headers, "x-ratelimit-limit-requests"), "60");
                        assert!(headers.get("retry-after").is_some());
                        limited += 1;
                    }
                    _ => panic!("{code}: {text}"),
                }
            }
            (ok, limited)
        }
    };
    let results = futures::future::join_all((0..6).map(client)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok: i64 = results.iter().map(|r| r.0).sum();
    let limited: i64 = results.iter().map(|r| r.1).sum();
    assert_eq!(ok + limited, 180);
    // The documented bound: the limit, the refill while the clients ran (1 a second), and a
    // second's refill per gateway; each gateway on its own would have let 60 through.
    let bound = 60 + elapsed.ceil() as i64 + 2;
    assert!(
        ok <= bound,
        "{ok} requests got through in {elapsed:.1} s; the bound is {bound}"
    );
    assert!(
        ok >= 55,
        "leases must not starve the limit: {ok} got through"
    );
    let per_gateway: Vec<i64> = (0..2)
        .map(|g| results.iter().skip(g).step_by(2).map(|r| r.0).sum())
        .collect();
    assert!(per_gateway.iter().all(|n| *n > 0), "{per_gateway:?}");
}

/// `max_parallel_requests` holds across gateways: each counts the others' requests in flight
/// as of their last exchange (every 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_requests_hold_across_gateways() {
    let slow = "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\nmodels = { fast = \"f\", balanced = \"b\", reasoning = \"r\" }\n[providers.simulated]\nlatency_ms = 5000\n";
    let cluster = Cluster::start(2, "all", slow).await;
    let g = &cluster.gateways;
    let account = g[0].account("Parallel Co", "10").await;
    let (_, key) = g[0]
        .key_with(&account, json!({"max_parallel_requests": 2}))
        .await;
    let body = json!({"model": "lumina-fast", "max_tokens": 8,
        "messages": [{"role": "user", "content": "take your time"}]});
    // Five requests 0.8 s apart, alternating gateways, each in flight for 5 s: the first two
    // fill the limit, the rest find it full whichever gateway they reach.
    let requests = (0..5).map(|i| {
        let (gateway, key, body) = (&g[i % 2], &key, &body);
        async move {
            tokio::time::sleep(Duration::from_millis(800 * i as u64)).await;
            let (code, _, text) = gateway.chat(key, body).await;
            (code, text)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let codes: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(codes, [200, 200, 429, 429, 429], "{answers:?}");
    for (_, text) in &answers[2..] {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["error"]["code"], "parallel_requests_exceeded", "{text}");
    }
}
