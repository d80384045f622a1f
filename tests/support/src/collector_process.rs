//! An OTLP collector in a child process, so that a test can SIGKILL it and start it again.
//! The child is the test binary itself, started with `EMBERPROF_TEST_COLLECTOR_PORT`; it
//! must call [`serve_if_asked`] first thing in `main`. Before answering a request the child
//! writes it to its stdout, so the parent knows every request that was answered,
//! even when the child is killed right after.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;

use crate::collector::TestCollector;

const PORT_VAR: &str = "EMBERPROF_TEST_COLLECTOR_PORT";

/// In a child started by [`CollectorProcess`], serves until killed and never returns;
/// otherwise returns at once.
pub fn serve_if_asked() {
    let Some(port) = std::env::var(PORT_VAR).ok().and_then(|p| p.parse().ok()) else {
        return;
    };
    let collector = TestCollector::start_on(port);
    let mut out = std::io::stdout();
    // `R` and no bytes: listening.
    let ready = out.write_all(b"R\0\0\0\0").and_then(|()| out.flush());
    if ready.is_err() {
        std::process::exit(1);
    }
    collector.mirror_to(Box::new(out));
    loop {
        std::thread::park();
    }
}

/// A collector running in a child process; what it answered is kept across kills.
pub struct CollectorProcess {
    port: u16,
    child: Option<Child>,
    reader: Option<std::thread::JoinHandle<()>>,
    received: Arc<Mutex<Answered>>,
}

/// The requests a [`CollectorProcess`] answered, in order of arrival.
#[derive(Default)]
pub struct Answered {
    pub profiles: Vec<ExportProfilesServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
}

impl CollectorProcess {
    /// Starts the child collector on loopback `port` and waits until it listens.
    pub fn start(port: u16) -> CollectorProcess {
        let mut c = CollectorProcess {
            port,
            child: None,
            reader: None,
            received: Arc::default(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .env(PORT_VAR, self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the collector process");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let received = self.received.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        self.reader = Some(std::thread::spawn(move || {
            let mut head = [0u8; 5];
            while stdout.read_exact(&mut head).is_ok() {
                let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
                let mut bytes = vec![0; len as usize];
                if stdout.read_exact(&mut bytes).is_err() {
                    break;
                }
                let mut r = received.lock().unwrap();
                match head[0] {
                    b'R' => {
                        let _ = ready_tx.send(());
                    }
                    b'P' => r
                        .profiles
                        .push(prost::Message::decode(&*bytes).expect("a profiles request")),
                    b'M' => r
                        .metrics
                        .push(prost::Message::decode(&*bytes).expect("a metrics request")),
                    tag => panic!("unknown frame {tag} from the collector process"),
                }
            }
        }));
        self.child = Some(child);
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the collector process listening");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the child and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Starts a new child on the same port, keeping what was received before.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The requests answered so far.
    pub fn received(&self) -> std::sync::MutexGuard<'_, Answered> {
        self.received.lock().unwrap()
    }

    /// Waits until `done` holds for what was answered, or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&Answered) -> bool) -> bool {
        crate::poll_until(timeout, || done(&self.received()))
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
