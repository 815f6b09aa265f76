//! An Apache Kafka broker for tests and benchmarks: one KRaft node (broker and controller in one
//! JVM) on free ports of 127.0.0.1, its storage formatted in a directory of the caller's, run
//! from the jars `scripts/test.sh` copies from Maven Central into the cache
//! (`LUMINA_TEST_KAFKA_LIBS`). It can be killed, stopped and started again on the same ports
//! and storage. Without the jars a test fails saying how to get them: it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Environment variable naming the directory of the broker's jars.
pub const LIBS_ENV: &str = "LUMINA_TEST_KAFKA_LIBS";

/// Any valid cluster id: each broker is a cluster of its own.
const CLUSTER_ID: &str = "THVtaW5hVGVzdENsdXN0ZQ";

/// How long a start may take before the broker counts as broken.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How the JVM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jvm {
    /// Quick to start (the client compiler only, serial GC, 512 MiB heap): for tests, which
    /// start a broker each and send it little.
    QuickStart,
    /// Both compilers and a 1 GiB heap: for benchmarks, which measure the broker's throughput.
    Throughput,
}

impl Jvm {
    fn options(self) -> &'static [&'static str] {
        match self {
            Jvm::QuickStart => &[
                "-Xms256m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xshare:auto",
            ],
            Jvm::Throughput => &["-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-Xshare:auto"],
        }
    }
}

/// A running (or stopped) single-node Kafka.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:PORT`, the address clients bootstrap from.
    pub address: String,
    dir: PathBuf,
    jvm: Jvm,
    starts: u32,
}

/// The jars' directory, or a panic saying how to get it.
fn libs() -> PathBuf {
    let libs = std::env::var(LIBS_ENV).unwrap_or_else(|_| {
        panic!(
            "{LIBS_ENV} is not set: the distributed-mode tests run Apache Kafka. Run them through \
             ./scripts/test.sh, which fetches Kafka's jars from Maven Central into the cache and \
             sets it"
        )
    });
    let libs = PathBuf::from(libs);
    assert!(
        libs.join(".complete").exists(),
        "{LIBS_ENV}={} holds no complete copy of Kafka's jars (scripts/test.sh makes one)",
        libs.display()
    );
    libs
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The broker's settings (`scripts/kafka/server.properties`, shared with the benchmarks), with
/// its ports and log dir filled in.
fn server_properties(port: u16, controller: u16, log_dir: &Path) -> String {
    include_str!("../../scripts/kafka/server.properties")
        .replace("@PORT@", &port.to_string())
        .replace("@CONTROLLER_PORT@", &controller.to_string())
        .replace("@LOG_DIR@", &log_dir.display().to_string())
}

impl Broker {
    /// Formats storage in `dir` and starts a broker on it, tuned to start quickly; returns once
    /// it answers metadata requests.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, Jvm::QuickStart)
    }

    /// Like [`Broker::start`], with the JVM run as `jvm` says.
    pub fn start_with(dir: &Path, jvm: Jvm) -> Broker {
        std::fs::create_dir_all(dir).expect("broker dir");
        let port = free_port();
        let properties = server_properties(port, free_port(), &dir.join("data"));
        std::fs::write(dir.join("server.properties"), properties).expect("server.properties");
        let format = Command::new("java")
            .args(jvm.options())
            .arg("-cp")
            .arg(libs().join("*"))
            .args(["kafka.tools.StorageTool", "format", "--standalone"])
            .args(["--cluster-id", CLUSTER_ID, "--config"])
            .arg(dir.join("server.properties"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run java (Java 17 or later is needed): {e}"));
        assert!(
            format.status.success(),
            "formatting Kafka's storage failed:\n{}{}",
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );
        let mut broker = Broker {
            child: None,
            address: format!("127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            jvm,
            starts: 0,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("broker log");
        let child = Command::new("java")
            .args(self.jvm.options())
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
            .arg("-cp")
            .arg(libs().join("*"))
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("broker log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run java (Java 17 or later is needed): {e}"));
        self.child = Some(child);
        self.wait_until_serving();
    }

    /// Waits until the broker lists itself in a metadata response.
    fn wait_until_serving(&mut self) {
        let started = Instant::now();
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .set("log_level", "0")
            .create()
            .expect("metadata client");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "Kafka exited with {status} during start:\n{}",
                    self.output()
                );
            }
            let listening = std::net::TcpStream::connect(&self.address).is_ok();
            if listening
                && client
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|m| !m.brokers().is_empty())
            {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "Kafka did not serve on {} within {START_TIMEOUT:?}:\n{}",
                self.address,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.join(format!("broker.{start}.log"))
    }

    /// Everything the broker printed, all starts included.
    pub fn output(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        self.signal("-TERM");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Freezes the broker with SIGSTOP: connections stay open and nothing answers, as behind
    /// a network partition.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Starts it again on the same ports and storage; returns once it serves.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}
