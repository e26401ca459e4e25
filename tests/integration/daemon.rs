//! Test support: `p1guard run` as a child process with a configuration of the test's own,
//! its output collected as it comes, and SIGTERM to stop it.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `p1guard run`.
pub struct Daemon {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// What a daemon printed and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Daemon {
    /// Writes `config` to `dir/p1guard.toml` and starts `p1guard run` on it, with `dir` as its
    /// state directory.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Daemon::start_with_env(dir, config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let path = dir.join("p1guard.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_p1guard"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("STATE_DIRECTORY", dir)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("p1guard starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Daemon {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` `times` times; panics with the log after `timeout`.
    pub fn wait_for_log(&self, text: &str, times: usize, timeout: Duration) {
        self.wait_for(&self.stderr, text, times, timeout);
    }

    /// Waits until stdout contains `text` `times` times.
    pub fn wait_for_output(&self, text: &str, times: usize, timeout: Duration) {
        self.wait_for(&self.stdout, text, times, timeout);
    }

    fn wait_for(&self, output: &Mutex<String>, text: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if output.lock().unwrap().matches(text).count() >= times {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "waited {timeout:?} for {times}× {text:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        );
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn terminate(self) -> Finished {
        self.stop_with("TERM")
    }

    /// Sends the signal `name` (`TERM`, `HUP`) and waits for the process to end.
    pub fn stop_with(self, name: &str) -> Finished {
        signal(self.child.id(), name);
        self.wait()
    }

    /// Waits for the process to end by itself; kills it and fails the test if it has not
    /// ended within a minute (a hung shutdown must not hang CI).
    pub fn wait(mut self) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "p1guard did not exit within a minute\n--- stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in std::mem::take(&mut self.readers) {
            reader.join().unwrap();
        }
        let take = |output: &Mutex<String>| std::mem::take(&mut *output.lock().unwrap());
        Finished {
            status,
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
        }
    }
}

/// A test that fails half-way leaves no p1guard behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(from);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

/// Sends signal `name` (e.g. `TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The path of `binary`, or a panic saying which package provides it.
pub fn require(binary: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`{binary}` is not installed; `apt-get install {package}` (scripts/test does)")
        })
}

/// The number in `... {label} N` of a summary line such as
/// `source p1: telegrams ok 42, crc_error 0, ...`.
pub fn count_after(text: &str, prefix: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    let rest = &line[line
        .find(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        + label.len()
        + 1..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}
