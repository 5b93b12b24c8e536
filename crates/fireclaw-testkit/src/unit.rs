//! The few systemd unit settings that decide how a distribution starts a daemon: who it runs as,
//! its command line, its capability bounding set. Fixtures read them from the installed unit file
//! rather than hard-coding them, so a test runs the daemon the way the host will.

use std::path::Path;

/// A `[Service]` section, as far as starting the daemon by hand needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `User=`; `None` means root.
    pub user: Option<String>,
    /// `Group=`; `None` means the user's primary group.
    pub group: Option<String>,
    /// `ExecStart=`, split on whitespace (the units we read use no quoting), prefixes (`-`, `@`,
    /// `+`, `!`) removed.
    pub exec_start: Vec<String>,
    /// `NoNewPrivileges=yes`.
    pub no_new_privileges: bool,
    /// `CapabilityBoundingSet=` names (`CAP_NET_BIND_SERVICE`...); empty when not set.
    pub capability_bounding_set: Vec<String>,
    /// `Type=`.
    pub kind: String,
}

/// Reads the `[Service]` section of a unit file.
pub fn read(path: &Path) -> Result<Service, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Service, String> {
    let mut section = String::new();
    let mut service = Service {
        user: None,
        group: None,
        exec_start: Vec::new(),
        no_new_privileges: false,
        capability_bounding_set: Vec::new(),
        kind: "simple".into(),
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "User" => service.user = Some(value.to_string()),
            "Group" => service.group = Some(value.to_string()),
            "Type" => service.kind = value.to_string(),
            "NoNewPrivileges" => {
                service.no_new_privileges = matches!(value, "yes" | "true" | "on" | "1")
            }
            "CapabilityBoundingSet" => {
                service.capability_bounding_set =
                    value.split_whitespace().map(str::to_string).collect()
            }
            "ExecStart" => {
                service.exec_start = value
                    .trim_start_matches(['-', '@', '+', '!', ':'])
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            _ => {}
        }
    }
    if service.exec_start.is_empty() {
        return Err("no ExecStart= in [Service]".into());
    }
    Ok(service)
}

impl Service {
    /// `setpriv` arguments that give a process this unit's user, groups and limits, as systemd
    /// would (supplementary groups from the user database, like systemd's initgroups).
    pub fn setpriv_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(user) = &self.user {
            args.push(format!("--reuid={user}"));
            args.push(format!("--regid={}", self.group.as_deref().unwrap_or(user)));
            args.push("--init-groups".into());
        } else if let Some(group) = &self.group {
            args.push(format!("--regid={group}"));
        }
        if self.no_new_privileges {
            args.push("--no-new-privs".into());
        }
        if !self.capability_bounding_set.is_empty() {
            let caps: Vec<String> = self
                .capability_bounding_set
                .iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
                .collect();
            args.push(format!("--bounding-set=-all,{}", caps.join(",")));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_NGIRCD: &str = "[Unit]\nDescription=Next Generation IRC Daemon\n\n[Service]\nType=forking\nUser=irc\nGroup=irc\nCapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_NET_BIND_SERVICE\nNoNewPrivileges=true\nExecStart=/usr/sbin/ngircd\n\n[Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn reads_debians_ngircd_unit() {
        let s = parse(DEBIAN_NGIRCD).unwrap();
        assert_eq!(s.user.as_deref(), Some("irc"));
        assert_eq!(s.exec_start, ["/usr/sbin/ngircd"]);
        assert_eq!(s.kind, "forking");
        let args = s.setpriv_args();
        assert!(args.contains(&"--reuid=irc".to_string()), "{args:?}");
        assert!(args.contains(&"--no-new-privs".to_string()), "{args:?}");
        assert!(
            args.contains(
                &"--bounding-set=-all,+setuid,+setgid,+sys_chroot,+net_bind_service".to_string()
            ),
            "{args:?}"
        );
    }

    #[test]
    fn a_unit_without_execstart_is_an_error() {
        assert!(parse("[Service]\nUser=x\n").is_err());
    }
}
