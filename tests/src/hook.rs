//! A loopback HTTPS receiver of webhook POSTs, as a SIEM or an auditor's collector would run
//! one: it keeps each request's body and its `authorization` header, and answers 200. Started
//! late, it is "down" (its port refuses) until then.
use std::{
    io::Write as _,
    net::TcpListener,
    sync::{Arc, Mutex},
};

use serde_json::Value;

use crate::https::TestCa;

pub struct Receiver {
    /// (body, authorization) of each POST, in arrival order.
    pub bodies: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    /// Listens on 127.0.0.1:`port` with a certificate for `names` from `ca`.
    pub fn start(port: u16, ca: &TestCa, names: &[&str]) -> Self {
        let config = Arc::new(ca.server_config(names));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let got = crate::read_request(&mut tls)
                    .map(|(head, body)| (body, crate::header(&head, "authorization").unwrap_or_default()));
                let Some(got) = got else { continue };
                kept.lock().unwrap().push(got);
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        Self { bodies }
    }

    /// Every JSON line received so far, in order.
    pub fn lines(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(b, _)| {
                b.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
