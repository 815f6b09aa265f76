//! Distributed-mode helpers: an Apache Kafka broker (KRaft, one node) on free ports with its
//! storage in a temp dir, and `lumina ledger` / `lumina projector` processes that can be killed
//! and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lumina_testkit::kafka;

use super::{bin, signal};

/// The broker, driven from async tests: starts and restarts wait on the blocking pool.
pub struct Broker {
    inner: Option<kafka::Broker>,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Broker {
    /// Formats storage in `dir` and starts a broker on it; returns once it serves.
    pub async fn start(dir: &Path) -> Broker {
        let dir = dir.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || kafka::Broker::start(&dir))
            .await
            .unwrap();
        Broker {
            address: inner.address.clone(),
            inner: Some(inner),
        }
    }

    async fn with(&mut self, f: impl FnOnce(&mut kafka::Broker) + Send + 'static) {
        let mut inner = self.inner.take().unwrap();
        let inner = tokio::task::spawn_blocking(move || {
            f(&mut inner);
            inner
        })
        .await
        .unwrap();
        self.inner = Some(inner);
    }

    /// Kills the broker with SIGKILL.
    pub fn kill9(&mut self) {
        self.inner.as_mut().unwrap().kill9();
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self) {
        self.with(kafka::Broker::stop).await;
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.inner.as_ref().unwrap().freeze();
    }

    /// Lets a frozen broker go on.
    pub fn thaw(&self) {
        self.inner.as_ref().unwrap().thaw();
    }

    /// Starts it again on the same address and storage.
    pub async fn restart(&mut self) {
        self.with(kafka::Broker::restart).await;
    }
}

/// A `lumina ledger` or `lumina projector` process on the topic.
pub struct ConsumerProc {
    child: Option<Child>,
    which: &'static str,
    config: PathBuf,
    output_dir: PathBuf,
    env: Vec<(String, String)>,
    starts: u32,
}

impl ConsumerProc {
    /// Starts `lumina <which> --config <config>`.
    pub fn start(which: &'static str, config: &Path, output_dir: &Path) -> ConsumerProc {
        ConsumerProc::start_with_env(which, config, output_dir, &[])
    }

    /// Starts `lumina <which> --config <config>` with extra environment.
    pub fn start_with_env(
        which: &'static str,
        config: &Path,
        output_dir: &Path,
        env: &[(&str, &str)],
    ) -> ConsumerProc {
        let mut p = ConsumerProc {
            child: None,
            which,
            config: config.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        self.starts += 1;
        std::fs::create_dir_all(&self.output_dir).unwrap();
        let out = std::fs::File::create(
            self.output_dir
                .join(format!("{}.{}.log", self.which, self.starts)),
        )
        .unwrap();
        let child = Command::new(bin())
            .args([self.which, "--config"])
            .arg(&self.config)
            .env_remove("LUMINA_DATABASE_URL")
            .env("LUMINA_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-KILL");
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM and waits for it to exit (a group member leaves its group).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "-TERM");
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns how long it took to exit (SIGKILL after 30 s).
    pub async fn terminate(&mut self) -> Duration {
        super::terminate(&mut self.child).await
    }

    /// The partitions its current run holds, from its "partitions assigned" and "partitions
    /// revoked" log lines (incremental under cooperative rebalancing).
    pub fn partitions(&self) -> std::collections::BTreeSet<i32> {
        let log = std::fs::read_to_string(
            self.output_dir
                .join(format!("{}.{}.log", self.which, self.starts)),
        )
        .unwrap_or_default();
        let mut held = std::collections::BTreeSet::new();
        for line in log.lines() {
            let assigned = line.contains("partitions assigned");
            if !assigned && !line.contains("partitions revoked") {
                continue;
            }
            let list = line
                .rsplit_once('[')
                .and_then(|(_, rest)| rest.split_once(']'))
                .map_or("", |(list, _)| list);
            for p in list.split(',').filter_map(|p| p.trim().parse::<i32>().ok()) {
                if assigned {
                    held.insert(p);
                } else {
                    held.remove(&p);
                }
            }
        }
        held
    }

    /// Starts it again.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Everything it printed, all starts included.
    pub fn output(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.output_dir.join(format!("{}.{i}.log", self.which)))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for ConsumerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
