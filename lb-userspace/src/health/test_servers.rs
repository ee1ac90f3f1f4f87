//! Small servers on 127.0.0.1 for the probe and prober tests. Each runs as a task of the test's
//! runtime and stops when dropped.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port nothing listens on (for TCP), found by binding and closing.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

pub fn closed_udp_port() -> u16 {
    std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// Accepts connections and closes them.
pub struct Tcp {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Tcp {
    pub async fn start() -> Tcp {
        Tcp::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Tcp {
        let listener = TcpListener::bind((LOCALHOST, port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Tcp { port, task }
    }

    /// Stops listening; returns once the port is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request with `status`, and keeps the requests it got.
pub struct Http {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Http {
    pub async fn start(status: u16) -> Http {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&request).into_owned());
                let response =
                    format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Http { port, requests, task }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
pub enum UdpMode {
    Echo,
    Silent,
    /// Echoes the 1st, 3rd, 5th... datagram, ignores the others.
    EveryOther,
    /// Answers with 3000 bytes, then what it got (as a large DNS answer holds the question
    /// beyond the first 2 KiB).
    Large,
}

pub struct Udp {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Udp {
    pub async fn start(mode: UdpMode) -> Udp {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut buf = [0; 2048];
            let mut received = 0u64;
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                received += 1;
                let answer = match mode {
                    UdpMode::Echo => Some(buf[..n].to_vec()),
                    UdpMode::Silent => None,
                    UdpMode::EveryOther => (received % 2 == 1).then(|| buf[..n].to_vec()),
                    UdpMode::Large => Some([&[b'.'; 3000][..], &buf[..n]].concat()),
                };
                if let Some(answer) = answer {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        Udp { port, task }
    }
}

impl Drop for Udp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
