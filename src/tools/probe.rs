//! `fp-relay probe`: asks the admin listener one question (`/healthz` or `/readyz`) and exits 0
//! when it answers 200. For exec probes where the admin listener is on loopback (the sidecar
//! manifest): the image has no shell and no curl, and a kubelet `httpGet` probe cannot reach
//! 127.0.0.1 in the pod.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What to ask, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeOptions {
    /// The check: healthz (the process serves) or readyz (events can be accepted safely now).
    #[arg(value_enum, default_value_t = Check::Readyz)]
    pub check: Check,
    /// The admin listener's address.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Longest wait for the answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub timeout: Duration,
}

/// The admin listener's two probes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Check {
    /// `/healthz`: the process is up and serving.
    Healthz,
    /// `/readyz`: standard events can be accepted safely right now.
    Readyz,
}

/// The status the admin listener answered, or why there was none.
pub fn run(options: &ProbeOptions) -> Result<u16, String> {
    let path = match options.check {
        Check::Healthz => "/healthz",
        Check::Readyz => "/readyz",
    };
    let mut stream = TcpStream::connect_timeout(&options.admin, options.timeout)
        .map_err(|e| format!("cannot connect to {}: {e}", options.admin))?;
    stream
        .set_read_timeout(Some(options.timeout))
        .and_then(|()| stream.set_write_timeout(Some(options.timeout)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        options.admin
    )
    .map_err(|e| format!("cannot ask {}: {e}", options.admin))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("no answer from {}: {e}", options.admin)),
        }
    }
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|text| text.split(' ').nth(1))
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("{} did not answer HTTP", options.admin))
}
