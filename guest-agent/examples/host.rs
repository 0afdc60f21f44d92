//! A minimal host for the agent: listens on a Unix socket, decodes with
//! `HostSession`, prints one line per event and acks. For trying the agent
//! by hand and for the measurements in README.md; the daemon will do the
//! same with its own event loop.
//!
//! ```sh
//! cargo run -p guest-agent --example host -- /tmp/agent.sock
//! guest-agent --unix /tmp/agent.sock      # in another shell
//! ```
//!
//! With Firecracker-style vsock (our VMM), a guest's connection to CID 2
//! port 1025 arrives at the Unix socket `<uds_path>_1025`: listen there.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use guest_agent::host::{Event, HostSession};

fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/guest-agent.sock".to_owned());
    let quiet = std::env::args().any(|a| a == "-q");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    eprintln!("listening on {path}");
    let mut session = HostSession::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for conn in listener.incoming() {
        let mut conn = conn?;
        session.connection_started();
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            events.clear();
            session.feed(&buf[..n], &mut events);
            for e in &events {
                if !quiet {
                    match e {
                        Event::Message { seq, message } => {
                            println!(
                                "{seq} {}",
                                serde_json::to_string(message).unwrap_or_default()
                            )
                        }
                        other => println!("{other:?}"),
                    }
                }
            }
            if let Some(ack) = session.take_ack() {
                if conn.write_all(&ack.to_line()).is_err() {
                    break;
                }
            }
        }
        eprintln!("connection closed; {:?}", session.stats());
    }
    Ok(())
}
