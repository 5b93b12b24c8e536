//! Who may use the control socket: root and the members of group `fireclaw`. The socket file is
//! `0660 root:fireclaw`, and every connection's peer credentials (SO_PEERCRED) are checked again,
//! so a socket whose mode was loosened by hand still refuses everyone else.

use nix::unistd::{Gid, Group, Uid, User};

/// The group that grants access, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct Access {
    pub group: String,
    pub gid: Gid,
}

/// The peer of one connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Access {
    /// Looks the group up; a missing group stops the runtime with what to do about it.
    pub fn from_system(group: &str) -> anyhow::Result<Access> {
        match Group::from_name(group) {
            Ok(Some(g)) => Ok(Access {
                group: group.to_string(),
                gid: g.gid,
            }),
            Ok(None) => anyhow::bail!(
                "group `{group}` does not exist: the control socket is 0660 root:{group}. \
                 Run `fireclaw provision` (it creates the group) or `groupadd --system {group}`"
            ),
            Err(e) => anyhow::bail!("looking up group `{group}`: {e}"),
        }
    }

    /// Root, or a member of the group (primary or supplementary, as the process runs now).
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.gid == self.gid.as_raw() {
            return true;
        }
        // The process's own groups decide file access, so they decide here too.
        if let Some(groups) = peer.pid.and_then(process_groups) {
            return groups.contains(&self.gid.as_raw());
        }
        // No pid (another pid namespace): fall back to the user's groups in the group database.
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, user.gid)
            .map(|g| g.contains(&self.gid))
            .unwrap_or(false)
    }
}

/// The supplementary groups of a process (`Groups:` in /proc/PID/status).
fn process_groups(pid: i32) -> Option<Vec<u32>> {
    if pid <= 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            group: "fireclaw".into(),
            gid: Gid::from_raw(4242),
        }
    }

    #[test]
    fn root_and_the_group_get_in_and_others_do_not() {
        let a = access();
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        assert!(a.allows(&peer(0, 0)));
        assert!(a.allows(&peer(1000, 4242)));
        // nobody: no pid to read groups from, and not in the group database.
        assert!(!a.allows(&peer(65534, 65534)));
        // A pid that does not exist says nothing; the database fallback decides.
        assert!(!a.allows(&Peer {
            uid: 65534,
            gid: 65534,
            pid: Some(i32::MAX),
        }));
    }

    #[test]
    fn groups_line_parsing() {
        let status = "Name:\tsh\nUid:\t1\t1\t1\t1\nGroups:\t4 24 4242 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), Some(vec![4, 24, 4242]));
        assert_eq!(parse_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups("Name: x\n"), None);
    }
}

#[cfg(test)]
mod missing_group {
    #[test]
    fn a_missing_group_is_a_refusal_that_says_what_to_do() {
        let e = super::Access::from_system("fireclaw-no-such-group-x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group `fireclaw-no-such-group-x` does not exist")
                && e.contains("fireclaw provision")
                && e.contains("groupadd --system"),
            "{e}"
        );
    }
}
