//! `lumina eval run --config FILE`: a `lumina serve` of this binary as a child process, on a
//! free 127.0.0.1 port the OS picks, with the configuration and a data dir (a temporary one
//! removed afterwards unless `--data-dir` names one to keep). Its banner gives the address and,
//! on a fresh data dir, the demo key; its log goes to a temporary file shown when it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long the child may take to become ready.
const START_WAIT: Duration = Duration::from_secs(120);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(20);
/// How long the banner's last lines may take to arrive once the child is ready.
const BANNER_WAIT: Duration = Duration::from_millis(300);

/// A running `lumina serve` child.
pub struct ServeChild {
    child: Child,
    /// Kept open: the child writes its banner here and must never find the pipe closed.
    stdout: Lines<BufReader<ChildStdout>>,
    log: tempfile::NamedTempFile,
    _data_dir: Option<tempfile::TempDir>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The demo key the child printed (a fresh data dir with `[demo]` enabled).
    pub demo_key: Option<String>,
}

impl ServeChild {
    /// Starts `lumina serve --config config` in `data_dir` (a temporary dir without one) and
    /// waits until it is ready.
    pub async fn start(config: &Path, data_dir: Option<&Path>) -> anyhow::Result<ServeChild> {
        let (temp, dir): (Option<tempfile::TempDir>, PathBuf) = match data_dir {
            Some(dir) => (None, dir.to_path_buf()),
            None => {
                let temp = tempfile::tempdir().context("cannot create a temporary data dir")?;
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let log = tempfile::NamedTempFile::new().context("cannot create the gateway's log")?;
        let exe = std::env::current_exe().context("cannot find the lumina binary")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen()?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start lumina serve")?;
        let stdout = child.stdout.take().context("no stdout of lumina serve")?;
        let mut serving = ServeChild {
            child,
            stdout: BufReader::new(stdout).lines(),
            log,
            _data_dir: temp,
            url: String::new(),
            demo_key: None,
        };
        match tokio::time::timeout(START_WAIT, serving.read_banner()).await {
            Ok(Ok(())) => Ok(serving),
            Ok(Err(e)) => Err(e.context(serving.log_tail())),
            Err(_) => bail!(
                "lumina serve did not start within {START_WAIT:?}\n{}",
                serving.log_tail()
            ),
        }
    }

    /// Reads the banner (address, then maybe the demo key) and waits for `/readyz`.
    async fn read_banner(&mut self) -> anyhow::Result<()> {
        while self.url.is_empty() {
            let Some(line) = self.stdout.next_line().await? else {
                bail!("lumina serve exited during start");
            };
            if let Some(url) = line.strip_prefix("Lumina is serving on ") {
                self.url = url.trim().to_string();
            }
        }
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("lumina serve exited during start with {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The banner is written whole before the server answers; read what is left of it.
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(BANNER_WAIT, self.stdout.next_line()).await
        {
            if let Some(rest) = line.trim().strip_prefix("demo key:") {
                self.demo_key = rest.split_whitespace().next().map(str::to_string);
                break;
            }
        }
        Ok(())
    }

    /// The last lines of the child's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        format!("lumina serve's log:\n{}", tail.join("\n"))
    }

    /// Stops the child with SIGTERM (SIGKILL after [`STOP_WAIT`]) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(STOP_WAIT, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}
