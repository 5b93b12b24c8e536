//! `{{name}}` substitution for the host templates in `recipes/`. Strict both ways: a placeholder with
//! no value and a value with no placeholder are errors, so a renamed variable cannot silently render
//! an empty setting into a config file.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("template {template}: line {line}: no value for {{{{{name}}}}}")]
    Missing {
        template: String,
        line: usize,
        name: String,
    },
    #[error("template {template}: line {line}: unclosed `{{{{`")]
    Unclosed { template: String, line: usize },
    #[error("template {template}: value {name:?} is never used")]
    Unused { template: String, name: String },
    #[error(
        "template {template}: value for {name:?} contains a newline, which would inject lines"
    )]
    Newline { template: String, name: String },
}

pub fn render(
    template_name: &str,
    text: &str,
    values: &[(&str, &str)],
) -> Result<String, TemplateError> {
    let map: BTreeMap<&str, &str> = values.iter().copied().collect();
    for (name, value) in &map {
        if value.contains('\n') || value.contains('\r') {
            return Err(TemplateError::Newline {
                template: template_name.into(),
                name: (*name).into(),
            });
        }
    }
    let mut used = std::collections::BTreeSet::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let line = text[..text.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed {
            template: template_name.into(),
            line,
        })?;
        let name = after[..end].trim();
        let value = map.get(name).ok_or_else(|| TemplateError::Missing {
            template: template_name.into(),
            line,
            name: name.into(),
        })?;
        used.insert(name);
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = map.keys().find(|k| !used.contains(*k)) {
        return Err(TemplateError::Unused {
            template: template_name.into(),
            name: (*unused).into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(
            render("t", "a={{ x }} b={{y}}\n", &[("x", "1"), ("y", "2")]).unwrap(),
            "a=1 b=2\n"
        );
    }

    #[test]
    fn errors_are_strict() {
        assert!(matches!(
            render("t", "\n{{x}}", &[]),
            Err(TemplateError::Missing { line: 2, .. })
        ));
        assert!(matches!(
            render("t", "{{x", &[("x", "1")]),
            Err(TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            render("t", "none", &[("x", "1")]),
            Err(TemplateError::Unused { .. })
        ));
        assert!(matches!(
            render("t", "{{x}}", &[("x", "1\n[Global]")]),
            Err(TemplateError::Newline { .. })
        ));
    }
}
