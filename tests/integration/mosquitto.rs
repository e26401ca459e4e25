//! Test support: a real mosquitto on a free port, with persistence, and MQTT clients that
//! publish to it and watch it.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, Packet, QoS};

use crate::daemon::{require, signal};

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    crate::free_address().port()
}

/// A mosquitto broker, killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// Where it listens for anonymous clients, on 127.0.0.1.
    pub port: u16,
    /// The second listener's port, if [`Mosquitto::start_with`] gave it settings.
    pub secure_port: u16,
    config: PathBuf,
}

impl Mosquitto {
    /// Starts a broker in `dir` for anonymous clients, keeping sessions and queued messages
    /// across restarts.
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, None)
    }

    /// Like [`Mosquitto::start`], with a second listener on [`Mosquitto::secure_port`]
    /// whose `settings` (TLS files, authentication) are its own, while the test's clients
    /// keep the anonymous one.
    pub fn start_with(dir: &Path, secure: Option<&str>) -> Mosquitto {
        let port = free_port();
        let secure_port = free_port();
        let config = dir.join("mosquitto.conf");
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        // Started as root, mosquitto drops to its own user, which must still write here.
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let second = secure.map_or(String::new(), |settings| {
            format!("listener {secure_port} 127.0.0.1\n{settings}")
        });
        std::fs::write(
            &config,
            format!(
                "per_listener_settings true\n\
                 persistence true\n\
                 persistence_location {}/\n\
                 max_queued_messages 0\n\
                 log_dest stderr\n\
                 log_type error\n\
                 listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 {second}",
                data.display()
            ),
        )
        .unwrap();
        let mut broker = Mosquitto {
            child: None,
            port,
            secure_port,
            config,
        };
        broker.spawn();
        broker
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub(crate) fn spawn(&mut self) {
        let binary = require("mosquitto", "mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker the way systemd would (it saves its sessions), and starts it again
    /// on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message a [`Watcher`] received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub topic: String,
    pub payload: String,
    /// Delivered from the broker's store of retained messages.
    pub retained: bool,
}

/// The retained messages a subscriber that connects now receives under `filter`.
pub fn retained(broker: &Mosquitto, client: &str, filter: &str) -> Vec<Seen> {
    let watcher = Watcher::start(broker.port, client, &[filter]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    watcher.seen()
}

/// A subscriber that records every message on its filters, in a thread of its own; its
/// session survives reconnects and broker restarts.
pub struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Subscribes `client_id` to `filters` at QoS 1 with a persistent session.
    pub fn start(port: u16, client_id: &str, filters: &[&str]) -> Watcher {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_clean_session(false);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 64);
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed, confirmed) = std::sync::mpsc::channel();
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            let mut acks = filters.len();
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::Publish(message))) => {
                            seen.lock().unwrap().push(Seen {
                                topic: message.topic.clone(),
                                payload: String::from_utf8_lossy(&message.payload).into_owned(),
                                retained: message.retain,
                            });
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            acks = acks.saturating_sub(1);
                            if acks == 0 {
                                let _ = subscribed.send(());
                            }
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        // The broker restarts: keep trying, the session waits for us.
                        Err(_) if stop.load(Relaxed) => return,
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        confirmed
            .recv_timeout(Duration::from_secs(10))
            .expect("the watcher subscribed");
        Watcher {
            seen,
            stop,
            client,
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received; panics with it after `timeout`.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting; received {} messages: {:#?}",
                seen.len(),
                seen.iter().rev().take(10).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last payload of each topic.
    pub fn latest(&self) -> BTreeMap<String, String> {
        self.seen()
            .into_iter()
            .map(|seen| (seen.topic, seen.payload))
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.client.disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Publishes `messages` at QoS 1 as `client_id` and returns once the broker acknowledged
/// every one.
pub fn publish_all(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
    publish(port, client_id, messages, false);
}

/// Like [`publish_all`], retained: what a later subscriber (a restarted Home Assistant) sees.
pub fn publish_retained(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
    publish(port, client_id, messages, true);
}

fn publish(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>, retain: bool) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 64);
    let count = messages.len();
    let publisher = std::thread::spawn(move || {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .unwrap();
        }
        client
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = 0;
    for event in connection.iter() {
        assert!(
            Instant::now() < deadline,
            "the broker acknowledged {acked} of {count}"
        );
        if let Event::Incoming(Incoming::PubAck(_)) = event.expect("the publisher stays connected")
        {
            acked += 1;
        }
        if acked == count {
            break;
        }
    }
    let client = publisher.join().unwrap();
    client.disconnect().unwrap();
}
