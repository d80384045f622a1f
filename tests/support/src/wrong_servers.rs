//! Servers an exporter may be pointed at by mistake or meet on a bad day: one that accepts
//! connections and never answers, and a plain HTTP/1 server. Each serves on a free loopback
//! port until dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a server treats each connection.
#[derive(Clone, Copy)]
enum Manner {
    /// Reads whatever comes and never writes.
    Silent,
    /// Answers the first bytes with `400 Bad Request`, as an HTTP/1 server answers an
    /// HTTP/2 preface, and closes.
    Http1,
}

/// A misbehaving server on a loopback port.
pub struct WrongServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl WrongServer {
    /// Accepts connections and never answers (a hung collector).
    pub fn silent() -> WrongServer {
        WrongServer::start(Manner::Silent)
    }

    /// Speaks HTTP/1 only (an OTLP/HTTP port, or any web server).
    pub fn http1() -> WrongServer {
        WrongServer::start(Manner::Http1)
    }

    fn start(manner: Manner) -> WrongServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, connections2) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections2.fetch_add(1, Ordering::Relaxed);
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || serve(stream, manner, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WrongServer {
            addr,
            stop,
            connections,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

fn serve(mut stream: TcpStream, manner: Manner, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if let Manner::Http1 = manner {
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for WrongServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
