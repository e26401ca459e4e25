//! What the fleet benches (`fleet`, over mosquitto, and `fleet_nats`, over NATS JetStream)
//! share of their rig: a scratch directory, free ports, the broker's binary, child
//! processes, CPU ticks from `/proc` and the daemon's `/metrics`. Included by each with
//! `#[path = "rig/mod.rs"] mod rig;`, so it is no bench target of its own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A fresh scratch directory `<prefix>-<pid>-<variant>` under the temp dir, so that
/// variants and concurrent runs do not share state.
pub fn workdir(prefix: &str, variant: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{variant}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// `binary` in PATH or /usr/sbin, or a panic saying how to install it.
pub fn require(binary: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("the fleet bench needs `{binary}`, which is not installed: `apt-get install {package}`")
        })
}

/// CPU time (user + system) used so far by what `stat` (a `/proc/.../stat` file) describes,
/// in clock ticks (1/100 s).
pub fn stat_ticks(stat: &str) -> u64 {
    let stat = std::fs::read_to_string(stat).expect("/proc/<pid>/stat");
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("a tick count");
    field(14) + field(15)
}

/// CPU time a process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// Clock ticks a second in `/proc/<pid>/stat` (`USER_HZ`).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// Microseconds of CPU per telegram.
pub fn us_per_telegram(ticks: u64, telegrams: u64) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / telegrams.max(1) as f64 * 1e6
}

/// A child process, killed when dropped.
pub struct Process {
    /// The running process.
    pub child: Child,
    /// What panics and logs call it.
    pub name: &'static str,
}

impl Process {
    /// Its process id, for `/proc/<pid>/stat` and signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the bench if the process has ended.
    pub fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("a status") {
            panic!("{} exited unexpectedly: {status}", self.name);
        }
    }

    /// SIGTERM, then waits up to a minute.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().expect("a status").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 10 s for something to listen on `port` (`what` names it in the panic), so a
/// server is ready before the bench talks to it.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `p1guard_telegrams_total{source=<source>,result="ok"}` from a daemon's `/metrics` on
/// `metrics`, or `None` while it does not answer: how the benches see telegrams arrive.
pub fn telegrams_ok(metrics: u16, source: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", metrics)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let source = format!("source=\"{source}\"");
    response
        .lines()
        .filter(|line| line.starts_with("p1guard_telegrams_total{"))
        .filter(|line| line.contains(&source) && line.contains("result=\"ok\""))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The benches' fleet: `count` DSMR 5 meters with a gas meter, simulated over one day from
/// the same instant and seeds, each with the address `address_of` gives its equipment id
/// (an MQTT topic, a NATS subject), so that both fleet benches time the same telegrams.
pub fn fleet_meters(
    count: usize,
    address_of: impl Fn(&str) -> String,
) -> Vec<(String, p1guard_simulator::Simulator)> {
    use p1guard_simulator::{MeterSpec, Simulator, Style};
    let start = "2026-06-01T06:00:00Z"
        .parse::<jiff::Timestamp>()
        .expect("a time");
    let end = start + jiff::SignedDuration::from_hours(24);
    (0..count)
        .map(|i| {
            let spec = MeterSpec {
                style: Style::Dsmr5,
                equipment_id: format!("E0053{:012}", 1_000_000 + i),
                gas_id: Some(format!("G0053{:012}", 1_000_000 + i)),
                seed: i as u64,
            };
            let address = address_of(&spec.equipment_id);
            (address, Simulator::new(spec, start, end, Vec::new()))
        })
        .collect()
}
