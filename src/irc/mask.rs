//! IRC hostmasks (`nick!user@host` with `*` and `?` wildcards), as `[irc] admins` lists them.

/// Whether `mask` matches the full `nick!user@host` of a sender. Case-insensitive, as IRC
/// compares nicks and hosts; `*` matches any run of characters, `?` exactly one.
pub fn matches(mask: &str, prefix: &str) -> bool {
    let m: Vec<char> = mask.to_lowercase().chars().collect();
    let p: Vec<char> = prefix.to_lowercase().chars().collect();
    // Iterative glob with single-star backtracking: linear in practice, and no recursion a
    // hostile mask could blow up.
    let (mut mi, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while pi < p.len() {
        if mi < m.len() && (m[mi] == '?' || m[mi] == p[pi]) {
            mi += 1;
            pi += 1;
        } else if mi < m.len() && m[mi] == '*' {
            star = Some(mi);
            mark = pi;
            mi += 1;
        } else if let Some(s) = star {
            mi = s + 1;
            mark += 1;
            pi = mark;
        } else {
            return false;
        }
    }
    m[mi..].iter().all(|&c| c == '*')
}

pub use crate::values::is_valid_mask;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_case() {
        assert!(matches("alice!*@*", "alice!~a@10.0.0.1"));
        assert!(matches("ALICE!*@*", "alice!a@h"));
        assert!(matches("*!*@172.16.0.?", "bob!b@172.16.0.5"));
        assert!(!matches("*!*@172.16.0.?", "bob!b@172.16.0.50"));
        assert!(matches("*", "anything!at@all"));
        assert!(!matches("alice!*@*", "alicex!a@h"));
        assert!(!matches("alice!*@*", "mallory!alice@*"));
        assert!(matches("a*b*c!*@*", "aXXbYYc!u@h"));
        assert!(!matches("", "a!b@c"));
    }

    #[test]
    fn hostile_masks_do_not_explode() {
        let mask = "*a".repeat(500) + "!*@*";
        let prefix = "a".repeat(5_000) + "b!u@h";
        assert!(!matches(&mask, &prefix));
    }

    #[test]
    fn mask_validation() {
        assert!(is_valid_mask("alice!*@*"));
        assert!(is_valid_mask("*!*@172.16.0.*"));
        for bad in [
            "alice",
            "alice!x",
            "!u@h",
            "a!@h",
            "a!u@",
            "a b!u@h",
            "a!u@h\r\n",
            "a!u@h@x",
        ] {
            assert!(!is_valid_mask(bad), "{bad:?}");
        }
    }
}
