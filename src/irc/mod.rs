//! IRC: names and the ngircd configuration fireclaw generates.

pub mod client;
pub mod command;
pub mod mask;
pub mod ngircd;
pub mod overseer;

/// RFC 2812 channel names as fireclaw uses them: `#` then 1..49 characters without space, comma,
/// BEL or colon.
pub fn is_channel_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('#') else {
        return false;
    };
    !rest.is_empty()
        && rest.len() < 50
        && !rest
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ':')
}

/// Nicknames: a letter or special first, then letters, digits, specials or `-`; at most 30.
pub fn is_nick(s: &str) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || special(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
        && s.len() <= 30
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(is_channel_name("#agents"));
        for bad in ["agents", "#", "#a b", "#a,b", "#a:b", "#a\u{7}"] {
            assert!(!is_channel_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn nicks() {
        assert!(is_nick("overseer"));
        assert!(is_nick("agent-1"));
        for bad in ["", "1abc", "a b", "a!b", "a@b", &"x".repeat(31)] {
            assert!(!is_nick(bad), "{bad:?}");
        }
    }
}
