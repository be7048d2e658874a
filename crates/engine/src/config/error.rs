//! Config errors: every one found, each with where it is.

use std::fmt;

/// One thing wrong with a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, as a path into the JSON: `block.ip[3]`, `scan.window`,
    /// `rules[2].port[0]`. Empty for a JSON syntax error (the line says
    /// where).
    pub path: String,
    /// 1-based line of the offending value in the file, when known.
    pub line: Option<usize>,
    /// What is wrong, quoting the bad value.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `block.ip[3] (line 7): "300.1.1.1" is not an IP address or CIDR prefix`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{} (line {line}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
            (true, Some(line)) => write!(f, "line {line}: {}", self.message),
            (true, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every error in a rules file, in file order where lines are known. Never
/// empty when returned as an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_one_per_line() {
        let errs = ConfigErrors {
            errors: vec![
                ConfigError {
                    path: "block.ip[3]".into(),
                    line: Some(7),
                    message: "\"300.1.1.1\" is not an IP address or CIDR prefix".into(),
                },
                ConfigError::new("scan.window", "must be more than zero"),
                ConfigError {
                    path: String::new(),
                    line: Some(2),
                    message: "JSON syntax: trailing comma (column 5)".into(),
                },
            ],
        };
        assert_eq!(
            errs.to_string(),
            "block.ip[3] (line 7): \"300.1.1.1\" is not an IP address or CIDR prefix\n\
             scan.window: must be more than zero\n\
             line 2: JSON syntax: trailing comma (column 5)"
        );
    }
}
