//! A Kubernetes API server stand-in on loopback for tests: serves `GET /api/v1/pods` lists
//! and `watch=true` streams of pod events, the way the real one does (JSON lines, a 410
//! `Expired` error for a resource version it does not have), and can be stopped and
//! started again on the same port to act out an API server restart.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct State {
    pods: Vec<Value>,
    /// (resource version, event type, object).
    events: Vec<(u64, &'static str, Value)>,
    version: u64,
    /// Versions below this are unknown to this server (it "restarted").
    oldest: u64,
    requests: Vec<String>,
}

/// The running stand-in; stops when dropped.
pub struct FakeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A pod of `node` with one running container.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    container: (&str, &str),
    annotations: Value,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1",
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{}-5d8f7b9c4", name.split('-').next().unwrap_or(name)),
                "uid": "0b7c6d5e-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": container.0, "image": "app:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": container.0, "containerID": format!("containerd://{}", container.1),
                "image": "app:1", "imageID": "sha256:0", "ready": true, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}
            }]
        }
    })
}

impl FakeApi {
    /// Serves `pods` on `port` (0: any free port); resource versions start at `first_version`.
    pub fn start(port: u16, pods: Vec<Value>, first_version: u64) -> FakeApi {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the fake API");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(State {
            pods,
            events: Vec::new(),
            version: first_version,
            oldest: first_version,
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        conns.push(std::thread::spawn(move || serve(conn, &s, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakeApi {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds a pod, announced to watchers as ADDED.
    pub fn add_pod(&self, pod: Value) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        let v = s.version;
        s.pods.push(pod.clone());
        s.events.push((v, "ADDED", pod));
    }

    /// The request lines (method and target) received so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: test\n",
            self.url()
        );
        std::fs::write(path, text).expect("writing a kubeconfig");
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Headers are not needed; read up to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    state.lock().unwrap().requests.push(line.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    if path != "/api/v1/pods" {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
    if param("watch").is_some_and(|w| w == "true" || w == "1") {
        let from: u64 = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = conn.write_all(head);
        if from < state.lock().unwrap().oldest {
            let expired = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from}")}});
            let _ = conn.write_all(format!("{expired}\n").as_bytes());
            return;
        }
        // Stream events after `from` for a while, then end the watch as servers do.
        let mut sent = from;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            let new: Vec<(u64, &'static str, Value)> = state
                .lock()
                .unwrap()
                .events
                .iter()
                .filter(|e| e.0 > sent)
                .cloned()
                .collect();
            for (v, kind, mut object) in new {
                object["metadata"]["resourceVersion"] = json!(v.to_string());
                let line = json!({"type": kind, "object": object});
                if conn.write_all(format!("{line}\n").as_bytes()).is_err() {
                    return;
                }
                sent = v;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        return;
    }
    let s = state.lock().unwrap();
    let list = json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": s.version.to_string()}, "items": s.pods});
    let _ = conn.write_all(head);
    let _ = conn.write_all(list.to_string().as_bytes());
}
