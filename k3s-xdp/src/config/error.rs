//! What a config check reports: one [`ConfigError`] per problem, each naming the file, the line
//! and column, the dotted key (`service[1].backends[0].address`) and what was expected.
//!
//! Warnings use the same type: they are notes with a position, printed by `k3s-xdp check` and
//! logged by `k3s-xdp run`, that do not stop the config from loading.

use std::{fmt, path::PathBuf};

/// One problem (or warning) in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place in the file (a missing top-level key).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the key, e.g. `service[1].backends[0].address` or `vrrp.priority`; empty
    /// for TOML syntax errors and for errors about the file as a whole.
    pub key: String,
    pub message: String,
}

/// `{file}:{line}:{column}: {key}: {message}`; the position is left out when unknown (line 0)
/// and the key when empty, so every line stays in the `file:line:col:` form editors jump to.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One error per line, no trailing newline.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// 1-based (line, column) of the byte `offset` of `text`; the column counts characters. An
/// offset past the end (or inside a character) is clamped, never a panic.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(text, 6 + 6), (2, 6));
        // Inside the two bytes of 'é', and past the end: clamped.
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, 1000), (3, 1));
        assert_eq!(line_column("", 5), (1, 1));
    }

    #[test]
    fn display_follows_file_line_column_key_message() {
        let e = ConfigError {
            file: "/etc/k3s-xdp/config.toml".into(),
            line: 14,
            column: 25,
            key: "service[0].backends[1].address".into(),
            message: "expected \"IP:PORT\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/k3s-xdp/config.toml:14:25: service[0].backends[1].address: expected \"IP:PORT\""
        );
        let unplaced = ConfigError {
            line: 0,
            column: 0,
            key: String::new(),
            ..e.clone()
        };
        assert_eq!(
            unplaced.to_string(),
            "/etc/k3s-xdp/config.toml: expected \"IP:PORT\""
        );
        let all = ConfigErrors(vec![e.clone(), unplaced]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
