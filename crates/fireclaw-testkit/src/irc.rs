//! An IRC client that acts as a person in tests: registers a nick, joins, says things, invites,
//! and reads what arrives line by line (answering the server's PINGs itself). Blocking, with
//! timeouts, so a test reads top to bottom.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One line from the server, split as RFC 1459 does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub raw: String,
    /// Without the leading `:`.
    pub prefix: Option<String>,
    pub command: String,
    /// The trailing parameter included, without its `:`.
    pub params: Vec<String>,
}

impl Line {
    pub fn parse(raw: &str) -> Line {
        let mut rest = raw.trim_end_matches(['\r', '\n']);
        let mut prefix = None;
        if let Some(r) = rest.strip_prefix(':') {
            let (p, tail) = r.split_once(' ').unwrap_or((r, ""));
            prefix = Some(p.to_string());
            rest = tail;
        }
        let (head, trailing) = match rest.split_once(" :") {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        let mut words = head.split(' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        let mut params: Vec<String> = words.map(str::to_string).collect();
        if let Some(t) = trailing {
            params.push(t.to_string());
        }
        Line {
            raw: raw.trim_end_matches(['\r', '\n']).to_string(),
            prefix,
            command,
            params,
        }
    }

    /// The sender's nick (the prefix up to `!`).
    pub fn nick(&self) -> Option<&str> {
        self.prefix
            .as_deref()
            .map(|p| p.split('!').next().unwrap_or(p))
    }

    /// The last parameter (a PRIVMSG's text).
    pub fn text(&self) -> &str {
        self.params.last().map(String::as_str).unwrap_or("")
    }

    /// True for `PRIVMSG target :...` from `nick`.
    pub fn is_privmsg(&self, from: &str, target: &str) -> bool {
        self.command == "PRIVMSG"
            && self.nick().is_some_and(|n| n.eq_ignore_ascii_case(from))
            && self
                .params
                .first()
                .is_some_and(|t| t.eq_ignore_ascii_case(target))
    }
}

pub struct IrcClient {
    pub nick: String,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
    /// Every line read so far, in order.
    pub seen: Vec<Line>,
}

impl IrcClient {
    /// Registers `nick` on `stream` (a connection to the server) and waits for the welcome.
    pub fn register(stream: TcpStream, nick: &str) -> std::io::Result<IrcClient> {
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = IrcClient {
            nick: nick.to_string(),
            stream,
            reader,
            partial: Vec::new(),
            seen: Vec::new(),
        };
        c.send_raw(&format!("NICK {nick}"))?;
        c.send_raw(&format!("USER {nick} 0 * :test person {nick}"))?;
        c.wait_for(Duration::from_secs(10), |l| l.command == "001")
            .ok_or_else(|| std::io::Error::other(format!("{nick}: no welcome from the server")))?;
        Ok(c)
    }

    /// Sends one line (CR LF added).
    pub fn send_raw(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())
    }

    pub fn say(&mut self, target: &str, text: &str) -> std::io::Result<()> {
        self.send_raw(&format!("PRIVMSG {target} :{text}"))
    }

    pub fn invite(&mut self, nick: &str, channel: &str) -> std::io::Result<()> {
        self.send_raw(&format!("INVITE {nick} {channel}"))
    }

    /// Joins `channel` and waits for the end of its names list.
    pub fn join(&mut self, channel: &str) -> std::io::Result<()> {
        self.send_raw(&format!("JOIN {channel}"))?;
        self.wait_for(Duration::from_secs(10), |l| {
            l.command == "366"
                && l.params
                    .get(1)
                    .is_some_and(|c| c.eq_ignore_ascii_case(channel))
        })
        .map(|_| ())
        .ok_or_else(|| std::io::Error::other(format!("{}: could not join {channel}", self.nick)))
    }

    /// The next line within `timeout`, `None` on timeout or a closed connection.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return None,
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let raw = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    let line = Line::parse(&raw);
                    if line.command == "PING" {
                        let _ = self.send_raw(&format!("PONG :{}", line.text()));
                    }
                    self.seen.push(line.clone());
                    return Some(line);
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads until a line matches `pred` (returned) or `timeout` passes (`None`).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Line) -> bool) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.next_line(left)?;
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Every line that arrives within `duration`.
    pub fn collect(&mut self, duration: Duration) -> Vec<Line> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next_line(left) {
                Some(l) => out.push(l),
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_command_params_and_trailing() {
        let l = Line::parse(":coder!~agent@10.0.0.2 PRIVMSG #agents :hello: world\r\n");
        assert_eq!(l.nick(), Some("coder"));
        assert_eq!(l.command, "PRIVMSG");
        assert_eq!(l.params, ["#agents", "hello: world"]);
        assert!(l.is_privmsg("Coder", "#AGENTS"));
        let l = Line::parse("PING :nyx.fireclaw.local");
        assert_eq!(
            (l.prefix.as_deref(), l.command.as_str(), l.text()),
            (None, "PING", "nyx.fireclaw.local")
        );
        let l = Line::parse(":srv 366 me #a :End of NAMES list");
        assert_eq!(l.params[1], "#a");
    }
}
