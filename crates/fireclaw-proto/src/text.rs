//! Turning model output into IRC lines that can only ever be text, and recognising when a message
//! is addressed to the agent. Pure functions: the hostile-input tests live here.

/// The longest line ngircd accepts or relays, CR LF included; longer disconnects the sender.
pub const IRC_LINE_MAX: usize = 512;
/// What a relayed PRIVMSG may carry in its `:nick!user@host ` prefix besides the nick: ngircd's
/// user name (at most 10 here, with `~`) and a host name (at most 63).
const PREFIX_SLACK: usize = 1 + 1 + 10 + 1 + 63 + 1;

/// Removes everything from one line of model output that IRC could read as anything but text: CR,
/// LF and NUL (which end or corrupt a command), CTCP's `\x01`, and the formatting codes (bold,
/// colour with its digits, reset, reverse, italic, underline, strike-through, monospace). Tabs
/// become spaces.
pub fn sanitize_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push(' '),
            '\x03' => {
                // mIRC colour: \x03[fg[,bg]] with one or two digits each.
                for _ in 0..2 {
                    if chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
                let mut look = chars.clone();
                if look.next() == Some(',') && look.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                    for _ in 0..2 {
                        if chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                    }
                }
            }
            '\x04' => {
                // Hex colour: \x04RRGGBB.
                for _ in 0..6 {
                    if chars.peek().is_some_and(char::is_ascii_hexdigit) {
                        chars.next();
                    }
                }
            }
            // Every other C0/C1 control, DEL, and the Unicode line/paragraph separators that some
            // clients render as breaks.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {}
            c => out.push(c),
        }
    }
    out
}

/// How many bytes of text fit in one `PRIVMSG target :text` from `nick`, after the server has
/// added the sender's prefix for the receivers.
pub fn payload_budget(nick: &str, target: &str) -> usize {
    let fixed = "PRIVMSG ".len() + target.len() + " :".len() + 2;
    IRC_LINE_MAX
        .saturating_sub(fixed + nick.len() + PREFIX_SLACK)
        .max(32)
}

/// Cuts `line` into pieces of at most `max` bytes, on UTF-8 boundaries, preferring the last space.
pub fn split_utf8(line: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = rest[..cut].rfind(' ') {
            if space > max / 2 {
                cut = space;
            }
        }
        out.push(rest[..cut].trim_end().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Model text → IRC lines: split at the model's line breaks (CR, LF or both), sanitized, blank lines
/// dropped, long lines cut to `max_bytes`, at most `max_lines` (the last says how many were cut).
pub fn irc_lines(text: &str, max_bytes: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split(['\r', '\n'])
        .map(sanitize_line)
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| split_utf8(l.trim_end(), max_bytes))
        .collect();
    if lines.len() > max_lines {
        let cut = lines.len() - (max_lines - 1);
        lines.truncate(max_lines - 1);
        lines.push(format!("[{cut} more lines not shown]"));
    }
    lines
}

/// The text of a channel message addressed to `nick` (`nick: text` or `nick, text`, the nick in
/// any ASCII case), or `None`.
pub fn addressed<'a>(text: &'a str, nick: &str) -> Option<&'a str> {
    let head = text.get(..nick.len())?;
    if !head.eq_ignore_ascii_case(nick) {
        return None;
    }
    let rest = &text[nick.len()..];
    let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix(','))?;
    Some(rest.trim())
}

/// The first `max` bytes of `s` on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_cannot_survive_sanitizing() {
        let hostile = "hi\r\nQUIT :owned\0\rJOIN #evil\n\x01ACTION dances\x01";
        let lines = irc_lines(hostile, 400, 10);
        assert_eq!(
            lines,
            ["hi", "QUIT :owned", "JOIN #evil", "ACTION dances"],
            "each piece is text of its own PRIVMSG, none a command"
        );
        for l in &lines {
            assert!(!l.contains(['\r', '\n', '\0', '\x01']), "{l:?}");
        }
        assert_eq!(sanitize_line("a\0b\rc\nd"), "abcd");
    }

    #[test]
    fn formatting_codes_are_stripped_with_their_arguments() {
        assert_eq!(
            sanitize_line("\x02bold\x02 \x0304,12red\x03 \x1Fu\x0F"),
            "bold red u"
        );
        assert_eq!(sanitize_line("\x04FF00FFhex \x1D\x1E\x11\x16x"), "hex x");
        assert_eq!(sanitize_line("\x0312,"), ",");
        assert_eq!(sanitize_line("a\u{2028}b\u{85}c\x7f"), "abc");
        assert_eq!(sanitize_line("tab\there"), "tab here");
    }

    #[test]
    fn splitting_keeps_utf8_whole_and_under_budget() {
        let s = "é".repeat(300) + " " + &"🦀".repeat(200);
        for max in [4, 5, 7, 100, 399] {
            let parts = split_utf8(&s, max);
            assert!(parts.iter().all(|p| p.len() <= max), "{max}");
            assert_eq!(parts.concat().replace(' ', ""), s.replace(' ', ""));
        }
        let words = "word ".repeat(200);
        for p in split_utf8(words.trim(), 50) {
            assert!(
                p.len() <= 50 && !p.starts_with(' ') && !p.ends_with(' '),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_relayed_line_fits_in_512_bytes() {
        let nick = "n".repeat(30);
        let target = "#".to_string() + &"c".repeat(49);
        let budget = payload_budget(&nick, &target);
        let relayed = format!(
            ":{nick}!~{}@{} PRIVMSG {target} :{}\r\n",
            "u".repeat(9),
            "h".repeat(63),
            "x".repeat(budget)
        );
        assert!(relayed.len() <= IRC_LINE_MAX, "{}", relayed.len());
    }

    #[test]
    fn long_replies_are_capped_with_a_note() {
        let text = "line\n".repeat(100);
        let lines = irc_lines(&text, 400, 5);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4], "[96 more lines not shown]");
        assert!(irc_lines("\r\n\n  \n", 400, 5).is_empty());
    }

    #[test]
    fn addressing_is_at_the_start_only() {
        assert_eq!(addressed("coder: do it", "coder"), Some("do it"));
        assert_eq!(addressed("Coder, do it", "coder"), Some("do it"));
        assert_eq!(addressed("coder:", "coder"), Some(""));
        assert_eq!(addressed("hey coder: do it", "coder"), None);
        assert_eq!(addressed("coder2: do it", "coder"), None);
        assert_eq!(addressed("coder do it", "coder"), None);
        assert_eq!(addressed("cod", "coder"), None);
        assert_eq!(addressed("éé", "coder"), None);
        assert_eq!(addressed("codeé: x", "coder"), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
