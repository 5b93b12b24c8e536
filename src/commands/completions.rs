//! `fireclaw completions SHELL` and `fireclaw manpage`: generated from the command definitions,
//! so they list exactly the commands and flags this binary has.

use crate::cli::CompletionsArgs;

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = crate::cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "fireclaw", &mut out);
    write_stdout(&out)?;
    Ok(super::exit::SUCCESS)
}

pub fn manpage() -> anyhow::Result<i32> {
    write_stdout(&render_manpage()?)?;
    Ok(super::exit::SUCCESS)
}

/// fireclaw(1): the top-level page with every subcommand's synopsis and options in its own
/// section (one page, so `man fireclaw` shows it all and the unit's `man:fireclaw(1)` resolves).
pub fn render_manpage() -> anyhow::Result<Vec<u8>> {
    let cmd = crate::cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    subs.sort_by_key(|s| s.get_display_order());
    for sub in subs {
        let name = format!("fireclaw {}", sub.get_name());
        let sub = sub.clone().bin_name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone()).render(&mut page)?;
        // Only the body of the subcommand's page: its title and NAME are the top page's.
        let text = String::from_utf8_lossy(&page);
        if let Some(body) = text.split_once("\n.SH SYNOPSIS\n").map(|(_, b)| b) {
            out.extend_from_slice(
                format!(
                    ".SH \"{}\"\n{}\n.SS SYNOPSIS\n",
                    name.to_uppercase(),
                    sub.get_about().map(|a| a.to_string()).unwrap_or_default()
                )
                .as_bytes(),
            );
            let body = body
                .replace("\n.SH EXTRA\n", "\n.SS EXAMPLES\n")
                .replace("\n.SH ", "\n.SS ");
            out.extend_from_slice(body.as_bytes());
        }
    }
    let mut extra = Vec::new();
    man.render_extra_section(&mut extra)?;
    out.extend_from_slice(
        String::from_utf8_lossy(&extra)
            .replace(".SH EXTRA\n", ".SH \"EXAMPLES AND EXIT STATUS\"\n")
            .as_bytes(),
    );
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(shell: clap_complete::Shell) -> String {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut crate::cli::command(), "fireclaw", &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_mention_every_subcommand() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let script = completion(shell);
            for sub in crate::cli::command().get_subcommands() {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell}: {} missing",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn manpage_has_a_title_and_every_subcommand() {
        let page = String::from_utf8(render_manpage().unwrap()).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH fireclaw 1"),
            "{}",
            &page[..200]
        );
        assert!(page.contains(".TH fireclaw 1"));
        for sub in crate::cli::command().get_subcommands() {
            assert!(
                page.contains(&format!("fireclaw {}", sub.get_name())),
                "{}",
                sub.get_name()
            );
        }
        // The provision step names, from the step list.
        assert!(page.contains("thinpool"));
    }
}
