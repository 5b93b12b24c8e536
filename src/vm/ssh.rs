//! Command execution in a guest over SSH (russh). The guest's host key is pinned from the image
//! manifest: a guest that presents any other key is refused, never trusted on first use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the guest at {addr} presented host key {got}, but the image manifest pins {expected}: refusing to connect")]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("the guest at {addr} refused key authentication as {user} (is fireclaw's public key in the image?)")]
    AuthRejected { addr: SocketAddr, user: String },
    #[error("SSH to {addr}: {message}")]
    Protocol { addr: SocketAddr, message: String },
    #[error("guest SSH at {addr} not ready after {waited:?}: {last}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
    #[error("bad key {what}: {message}")]
    Key { what: String, message: String },
    #[error("writing command output: {0}")]
    Output(std::io::Error),
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub key: Arc<PrivateKey>,
    pub host_key: PublicKey,
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`).
pub fn parse_host_key(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| SshError::Key {
        what: "ssh_host_key in image manifest".into(),
        message: format!("{e} (expected one OpenSSH public key line)"),
    })
}

pub fn load_private_key(path: &std::path::Path) -> Result<PrivateKey, SshError> {
    let text = std::fs::read_to_string(path).map_err(|e| SshError::Key {
        what: path.display().to_string(),
        message: format!("{e} (run `fireclaw provision` to generate it)"),
    })?;
    PrivateKey::from_openssh(&text).map_err(|e| SshError::Key {
        what: path.display().to_string(),
        message: e.to_string(),
    })
}

struct Pinned {
    expected: PublicKey,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        Ok(key.key_data() == self.expected.key_data())
    }
}

/// An authenticated connection.
pub struct Session {
    handle: client::Handle<Pinned>,
    addr: SocketAddr,
}

/// How the remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(u32),
    Signal(String),
    /// The channel closed without an exit status (e.g. the connection dropped).
    Unknown,
}

impl Exit {
    /// The exit code a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match self {
            Exit::Code(c) => (*c).min(255) as i32,
            Exit::Signal(name) => 128 + signal_number(name),
            Exit::Unknown => 255,
        }
    }
}

/// SSH signal names (RFC 4254 §6.10) to Linux numbers.
pub fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    }
}

fn sig_name(s: &russh::Sig) -> String {
    use russh::Sig;
    match s {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(c) => c
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect(),
    }
}

/// Joins arguments into one command line for the remote shell, quoting each so that what the
/// user typed after `--` arrives as the same words.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        // A guest that dies under a session never closes it: keepalives unanswered for about
        // 20 s end the session (and every call waiting on it) instead of TCP's quarter hour.
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        ..Default::default()
    })
}

/// Whether an error means "try again later" (the guest is still booting) or is final.
fn is_permanent(e: &SshError) -> bool {
    matches!(
        e,
        SshError::HostKeyMismatch { .. } | SshError::AuthRejected { .. } | SshError::Key { .. }
    )
}

/// One connection attempt: TCP, handshake with the pinned key, public key auth.
pub async fn connect(t: &Target, tcp_timeout: Duration) -> Result<Session, SshError> {
    let proto = |message: String| SshError::Protocol {
        addr: t.addr,
        message,
    };
    let stream = tokio::time::timeout(tcp_timeout, tokio::net::TcpStream::connect(t.addr))
        .await
        .map_err(|_| proto("TCP connect timed out".into()))?
        .map_err(|e| proto(format!("TCP connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let handler = Pinned {
        expected: t.host_key.clone(),
        seen: seen.clone(),
    };
    let handshake = tokio::time::timeout(
        tcp_timeout * 4,
        client::connect_stream(config(), stream, handler),
    )
    .await
    .map_err(|_| proto("SSH handshake timed out".into()))?;
    let mut handle = match handshake {
        Ok(h) => h,
        Err(e) => {
            let got = seen.lock().ok().and_then(|s| s.clone());
            if let Some(got) = got {
                if got.key_data() != t.host_key.key_data() {
                    return Err(SshError::HostKeyMismatch {
                        addr: t.addr,
                        expected: t.host_key.to_openssh().unwrap_or_default(),
                        got: got.to_openssh().unwrap_or_default(),
                    });
                }
            }
            return Err(proto(format!("handshake: {e}")));
        }
    };
    // Bounded like the handshake: a guest that dies mid-authentication never answers.
    let auth = tokio::time::timeout(
        tcp_timeout * 4,
        handle.authenticate_publickey(
            t.user.clone(),
            PrivateKeyWithHashAlg::new(t.key.clone(), None),
        ),
    )
    .await
    .map_err(|_| proto("authentication timed out".into()))?
    .map_err(|e| proto(format!("authentication: {e}")))?;
    if !auth.success() {
        return Err(SshError::AuthRejected {
            addr: t.addr,
            user: t.user.clone(),
        });
    }
    Ok(Session {
        handle,
        addr: t.addr,
    })
}

/// Waits for the guest's SSH server with exponential backoff (50 ms doubling to 1 s) until
/// `deadline`. Refused connections and resets are "not yet"; a wrong host key or a rejected key
/// ends the wait at once.
pub async fn wait_ready(t: &Target, deadline: Instant) -> Result<Session, SshError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt_timeout = Duration::from_secs(2);
        let err = match connect(t, attempt_timeout).await {
            Ok(s) => return Ok(s),
            Err(e) if is_permanent(&e) => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        if now + delay >= deadline {
            return Err(SshError::NotReady {
                addr: t.addr,
                waited: start.elapsed(),
                last: err.to_string(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

impl Session {
    /// Runs `command`, streaming its stdout and stderr to the writers as they arrive.
    pub async fn exec<O, E>(
        &self,
        command: &str,
        out: &mut O,
        err: &mut E,
    ) -> Result<Exit, SshError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let proto = |message: String| SshError::Protocol {
            addr: self.addr,
            message,
        };
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| proto(format!("opening a session channel: {e}")))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| proto(format!("starting the command: {e}")))?;
        let mut exit = Exit::Unknown;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    out.write_all(&data).await.map_err(SshError::Output)?;
                    out.flush().await.map_err(SshError::Output)?;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    err.write_all(&data).await.map_err(SshError::Output)?;
                    err.flush().await.map_err(SshError::Output)?;
                }
                ChannelMsg::ExitStatus { exit_status } => exit = Exit::Code(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    exit = Exit::Signal(sig_name(&signal_name))
                }
                _ => {}
            }
        }
        Ok(exit)
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_preserves_words() {
        let args: Vec<String> = ["sh", "-c", "exit 7", "it's", "", "a;b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_join(&args), "sh -c 'exit 7' 'it'\\''s' '' 'a;b'");
        assert_eq!(shell_join(&["uname".into(), "-a".into()]), "uname -a");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::Code(7).shell_code(), 7);
        assert_eq!(Exit::Code(300).shell_code(), 255);
        assert_eq!(Exit::Signal("KILL".into()).shell_code(), 137);
        assert_eq!(Exit::Signal("WEIRD".into()).shell_code(), 128);
        assert_eq!(Exit::Unknown.shell_code(), 255);
    }

    #[test]
    fn host_key_lines() {
        let k = parse_host_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEvuTJJdT3OfA7BKZQTs1gYDKuRMi3YTdnr1c2nLLh4v  \n",
        )
        .unwrap();
        assert_eq!(k.algorithm().as_str(), "ssh-ed25519");
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!!",
            "AAAA",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIEvu",
        ] {
            assert!(parse_host_key(bad).is_err(), "{bad:?}");
        }
    }
}
