//! Per-tool argument constraints, checked after Cedar allows the call: options from a list,
//! paths confined to allowed roots once resolved, URLs only to allowed hosts.

use std::path::{Component, Path, PathBuf};

use crate::config::{ArgumentKind, ToolConfig};

/// Checks `arguments` against `tool`'s constraints; returns the arguments to run with (paths
/// resolved, so a symlink swapped in later cannot redirect them), or why they are refused.
pub fn check_arguments(tool: &ToolConfig, arguments: &[String]) -> Result<Vec<String>, String> {
    if arguments.len() > tool.max_arguments {
        return Err(format!(
            "{} arguments; the tool takes at most {}",
            arguments.len(),
            tool.max_arguments
        ));
    }
    let mut checked = Vec::with_capacity(arguments.len());
    for (index, argument) in arguments.iter().enumerate() {
        let position = index + 1;
        if argument.len() > tool.max_argument_bytes {
            return Err(format!(
                "argument {position} is {} bytes; at most {} are allowed",
                argument.len(),
                tool.max_argument_bytes
            ));
        }
        if argument.contains('\0') {
            return Err(format!("argument {position} contains a NUL byte"));
        }
        if argument.starts_with('-') && argument.len() > 1 {
            if tool.allowed_options.iter().any(|option| option == argument) {
                checked.push(argument.clone());
                continue;
            }
            return Err(format!(
                "argument {position}: option {argument:?} is not allowed (allowed: {})",
                if tool.allowed_options.is_empty() {
                    "none".to_owned()
                } else {
                    tool.allowed_options.join(" ")
                }
            ));
        }
        let value = match tool.arguments {
            ArgumentKind::None => {
                return Err(format!(
                    "argument {position}: the tool takes no arguments besides its options"
                ));
            }
            ArgumentKind::Free => argument.clone(),
            ArgumentKind::Paths => confine_path(argument, &tool.allowed_roots)
                .map_err(|reason| format!("argument {position}: {reason}"))?,
            ArgumentKind::Urls => {
                check_url(argument, &tool.allowed_hosts)
                    .map_err(|reason| format!("argument {position}: {reason}"))?;
                argument.clone()
            }
        };
        checked.push(value);
    }
    Ok(checked)
}

/// Resolves `argument` (symlinks included) and requires it inside one of `roots`.
pub fn confine_path(argument: &str, roots: &[PathBuf]) -> Result<String, String> {
    let path = Path::new(argument);
    if !path.is_absolute() {
        return Err("paths must be absolute".to_owned());
    }
    if path
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err("paths must not contain '..'".to_owned());
    }
    let resolved = resolve(path).map_err(|error| format!("cannot resolve the path: {error}"))?;
    let inside = roots.iter().any(|root| {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        resolved.starts_with(&root)
    });
    if !inside {
        return Err(format!(
            "{} is outside the allowed roots ({})",
            resolved.display(),
            roots
                .iter()
                .map(|root| root.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    resolved
        .into_os_string()
        .into_string()
        .map_err(|_| "the resolved path is not UTF-8".to_owned())
}

/// The canonical form of `path`; for one that does not exist yet, its deepest existing
/// ancestor resolved with the rest appended.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(resolved) => Ok(resolved),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut missing = Vec::new();
            let mut ancestor = path;
            loop {
                let Some(parent) = ancestor.parent() else {
                    return Err(error);
                };
                if let Some(name) = ancestor.file_name() {
                    missing.push(name.to_owned());
                }
                ancestor = parent;
                if let Ok(resolved) = std::fs::canonicalize(ancestor) {
                    let mut resolved = resolved;
                    resolved.extend(missing.iter().rev());
                    return Ok(resolved);
                }
            }
        }
        Err(error) => Err(error),
    }
}

/// An http(s) URL without credentials whose host is one of `hosts`.
fn check_url(argument: &str, hosts: &[String]) -> Result<(), String> {
    let rest = argument
        .strip_prefix("https://")
        .or_else(|| argument.strip_prefix("http://"))
        .ok_or_else(|| "URLs must start with http:// or https://".to_owned())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@')
        || argument.contains('\\')
        || argument.chars().any(char::is_whitespace)
    {
        return Err("URLs must not carry credentials, backslashes or spaces".to_owned());
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
    .to_ascii_lowercase();
    if hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(&host))
    {
        Ok(())
    } else {
        Err(format!(
            "host {host:?} is not allowed (allowed: {})",
            hosts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_tool(root: &Path) -> ToolConfig {
        ToolConfig {
            command: PathBuf::from("/bin/ls"),
            arguments: ArgumentKind::Paths,
            allowed_options: vec!["-l".to_owned()],
            allowed_roots: vec![root.to_owned()],
            ..ToolConfig::default()
        }
    }

    #[test]
    fn traversal_and_escapes_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().join("allowed");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("file.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let tool = paths_tool(&root);
        let check = |argument: &str| check_arguments(&tool, &[argument.to_owned()]);
        let root_text = std::fs::canonicalize(&root).unwrap().display().to_string();

        assert_eq!(
            check(&format!("{root_text}/file.txt")).unwrap(),
            vec![format!("{root_text}/file.txt")]
        );
        assert_eq!(
            check(&format!("{root_text}/new/file")).unwrap(),
            vec![format!("{root_text}/new/file")]
        );
        for (attempt, reason) in [
            (format!("{root_text}/../secret"), "must not contain '..'"),
            (
                format!("{root_text}/escape/passwd"),
                "outside the allowed roots",
            ),
            ("/etc/passwd".to_owned(), "outside the allowed roots"),
            ("relative/path".to_owned(), "must be absolute"),
            (
                format!("{root_text}-sibling/file"),
                "outside the allowed roots",
            ),
        ] {
            let error = check(&attempt).unwrap_err();
            assert!(error.contains(reason), "{attempt}: {error}");
        }
        assert!(
            check("--dangerous")
                .unwrap_err()
                .contains("option \"--dangerous\" is not allowed")
        );
        assert!(
            check_arguments(&tool, &["-l".to_owned(), format!("{root_text}/file.txt")]).is_ok()
        );
        assert!(check("a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn urls_go_only_to_allowed_hosts() {
        let tool = ToolConfig {
            command: PathBuf::from("/usr/bin/curl"),
            arguments: ArgumentKind::Urls,
            allowed_hosts: vec!["deb.debian.org".to_owned()],
            network: true,
            ..ToolConfig::default()
        };
        let check = |argument: &str| check_arguments(&tool, &[argument.to_owned()]);
        assert!(check("https://deb.debian.org/debian/").is_ok());
        assert!(check("http://DEB.debian.org:80/x").is_ok());
        assert!(
            check("https://evil.example/")
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(
            check("https://deb.debian.org@evil.example/")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check("ftp://deb.debian.org/")
                .unwrap_err()
                .contains("http://")
        );
        assert!(check("https://deb.debian.org.evil.example/").is_err());
    }

    #[test]
    fn limits_and_argument_free_tools() {
        let tool = ToolConfig {
            command: PathBuf::from("/bin/date"),
            allowed_options: vec!["-u".to_owned()],
            max_arguments: 2,
            ..ToolConfig::default()
        };
        assert!(check_arguments(&tool, &["-u".to_owned()]).is_ok());
        assert!(
            check_arguments(&tool, &["+%s".to_owned()])
                .unwrap_err()
                .contains("takes no arguments")
        );
        assert!(
            check_arguments(&tool, &vec!["-u".to_owned(); 3])
                .unwrap_err()
                .contains("at most 2")
        );
    }
}
