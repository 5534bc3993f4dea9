//! Provider credentials: systemd's `$CREDENTIALS_DIRECTORY`, then the environment, then a file.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show a placeholder, so it cannot
//! reach a log line, an error message or a metric by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A credential's value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it: the `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

/// Where credentials are looked up, in order.
#[derive(Debug, Clone)]
pub(crate) struct CredentialSources {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for `LoadCredential=`.
    pub(crate) directory: Option<PathBuf>,
    /// The `[credentials] file`.
    pub(crate) file: PathBuf,
}

impl CredentialSources {
    /// The sources of this process.
    pub(crate) fn from_environment(file: &Path) -> Self {
        Self {
            directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            file: file.to_owned(),
        }
    }

    /// Finds credential `name`. The error says where it looked, never a value.
    pub(crate) fn resolve(&self, name: &str) -> Result<Secret, String> {
        if let Some(directory) = &self.directory {
            let path = directory.join(name);
            match std::fs::read_to_string(&path) {
                Ok(value) => return non_empty(value.trim_end_matches(['\n', '\r']), &path),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(format!("{}: cannot read: {error}", path.display())),
            }
        }
        let variable = environment_variable(name);
        if let Ok(value) = std::env::var(&variable) {
            if value.is_empty() {
                return Err(format!("environment variable {variable} is empty"));
            }
            return Ok(Secret(value));
        }
        match std::fs::read_to_string(&self.file) {
            Ok(text) => {
                let table: BTreeMap<String, String> = toml_table(&text).map_err(|error| {
                    format!(
                        "{}: not a TOML table of strings: {error}",
                        self.file.display()
                    )
                })?;
                match table.get(name) {
                    Some(value) => non_empty(value, &self.file),
                    None => Err(self.not_found(name, &variable)),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(self.not_found(name, &variable))
            }
            Err(error) => Err(format!("{}: cannot read: {error}", self.file.display())),
        }
    }

    fn not_found(&self, name: &str, variable: &str) -> String {
        let directory = self.directory.as_ref().map_or_else(
            || "$CREDENTIALS_DIRECTORY (unset)".to_owned(),
            |directory| directory.join(name).display().to_string(),
        );
        format!(
            "credential {name:?} not found in {directory}, environment variable {variable} or {}",
            self.file.display()
        )
    }
}

fn non_empty(value: &str, origin: &Path) -> Result<Secret, String> {
    if value.is_empty() {
        Err(format!("{}: credential is empty", origin.display()))
    } else {
        Ok(Secret(value.to_owned()))
    }
}

fn toml_table(text: &str) -> Result<BTreeMap<String, String>, String> {
    use figment::Figment;
    use figment::providers::{Format as _, Toml};
    // The same TOML reader as the configuration; a syntax error's message names only the line.
    Figment::from(Toml::string(text))
        .extract()
        .map_err(|error| error.kind.to_string())
}

/// `SYNOS_CREDENTIAL_<NAME>`, upper case, '-' as '_'.
pub(crate) fn environment_variable(name: &str) -> String {
    format!(
        "SYNOS_CREDENTIAL_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_wins_then_the_environment_then_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("credentials.toml");
        std::fs::write(&file, "groq = \"from-file\"\nother = \"x\"\n").unwrap();
        let credentials = directory.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        std::fs::write(credentials.join("groq"), "from-directory\n").unwrap();
        let sources = CredentialSources {
            directory: Some(credentials.clone()),
            file,
        };
        assert_eq!(sources.resolve("groq").unwrap().expose(), "from-directory");
        std::fs::remove_file(credentials.join("groq")).unwrap();
        assert_eq!(sources.resolve("groq").unwrap().expose(), "from-file");
        let missing = sources.resolve("absent-one").unwrap_err();
        assert!(missing.contains("SYNOS_CREDENTIAL_ABSENT_ONE"), "{missing}");
        assert!(!missing.contains("from-file"), "{missing}");
    }

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret("sk-very-secret".to_owned());
        assert!(!format!("{secret:?}").contains("very"));
    }
}
