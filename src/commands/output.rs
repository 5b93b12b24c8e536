//! stdout and stderr that a reader going away cannot break.
//!
//! `fireclaw provision --dry-run | head -1` closes the pipe after one line. Rust ignores SIGPIPE, so
//! the next write fails with EPIPE and `println!` panics; restoring SIGPIPE's default instead would
//! end fireclaw on that write, wherever it is. Neither is acceptable for a command that changes the
//! host: `provision | less`, quit early, must not stop half-way through an apply (nor kill the
//! apt-get or make it runs, whose output goes to the same pipe), and `run | head` must still tear its
//! VM down.
//!
//! So when stdout or stderr is a pipe or socket, fireclaw points it at a pipe of its own and a thread
//! copies that to the real one. When the reader goes away the thread keeps reading and drops the
//! rest: every write fireclaw and its children make still succeeds, the command finishes what it
//! started and exits with its usual code. Terminals and files are left alone (no EPIPE there), so
//! progress bars and colours that look for a terminal see the same thing as before.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::stat::{fstat, SFlag};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    fn point_at(self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        match self {
            Stream::Out => nix::unistd::dup2_stdout(fd),
            Stream::Err => nix::unistd::dup2_stderr(fd),
        }
    }
}

struct Relay {
    streams: Vec<Stream>,
    /// The real stdout/stderr, to put back when done.
    original: OwnedFd,
    writer: std::io::PipeWriter,
    done: mpsc::Receiver<()>,
}

/// Restores stdout/stderr and waits for what is still in flight when [`Guard::finish`] is called.
pub struct Guard {
    relays: Vec<Relay>,
}

/// The pipe (device, inode) a descriptor writes to, if it is a pipe or a socket.
fn pipe_identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let st = fstat(fd).ok()?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    (kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK).then_some((st.st_dev, st.st_ino))
}

/// Puts relays in front of stdout and stderr where they are pipes. Failing to set one up only
/// leaves that stream as it was.
pub fn protect() -> Guard {
    let out = pipe_identity(std::io::stdout().as_fd());
    let err = pipe_identity(std::io::stderr().as_fd());
    let mut relays = Vec::new();
    match (out, err) {
        // `2>&1 | less`: one relay for both keeps their lines in the order they were written.
        (Some(o), Some(e)) if o == e => relays.extend(Relay::start(&[Stream::Out, Stream::Err])),
        _ => {
            if out.is_some() {
                relays.extend(Relay::start(&[Stream::Out]));
            }
            if err.is_some() {
                relays.extend(Relay::start(&[Stream::Err]));
            }
        }
    }
    Guard { relays }
}

impl Relay {
    fn start(streams: &[Stream]) -> Option<Relay> {
        let first = match streams.first()? {
            Stream::Out => std::io::stdout().as_fd().try_clone_to_owned(),
            Stream::Err => std::io::stderr().as_fd().try_clone_to_owned(),
        };
        let original = first.ok()?;
        let sink = original.try_clone().ok()?;
        let (mut reader, writer) = std::io::pipe().ok()?;
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("output-relay".into())
            .spawn(move || {
                let mut sink = std::fs::File::from(sink);
                let mut open = true;
                let mut buf = [0u8; 8192];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            // After the reader went away, keep draining so writers never block or fail.
                            if open && sink.write_all(&buf[..n]).is_err() {
                                open = false;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            })
            .ok()?;
        let mut pointed = Vec::new();
        for &s in streams {
            if s.point_at(writer.as_fd()).is_err() {
                // Undo what was redirected; the thread ends when `writer` drops.
                for &p in &pointed {
                    let _ = Stream::point_at(p, original.as_fd());
                }
                return None;
            }
            pointed.push(s);
        }
        Some(Relay {
            streams: streams.to_vec(),
            original,
            writer,
            done,
        })
    }
}

impl Guard {
    /// Puts the real stdout/stderr back and lets the relays copy out what is left. A child that
    /// still holds the pipe (and so would keep it open) is waited for a short while only.
    pub fn finish(self) {
        let _ = std::io::stdout().flush();
        for r in &self.relays {
            for &s in &r.streams {
                let _ = s.point_at(r.original.as_fd());
            }
        }
        let mut waiting = Vec::new();
        for r in self.relays {
            drop(r.writer);
            waiting.push(r.done);
        }
        for done in waiting {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }
}
