//! What a memory is: scopes, kinds, the stored record, and the checks every input passes.

use std::collections::BTreeMap;
use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

/// Who may see a memory: everyone, one user, or one chat. Recall reads only named scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

/// Longest user or chat id in a scope.
const MAX_SCOPE_ID_BYTES: usize = 128;

impl Scope {
    /// The scope every agent may read.
    pub fn global() -> Self {
        Self("global".to_owned())
    }

    /// Parses `global`, `user:<id>` or `chat:<id>`; ids are 1–128 of `A-Z a-z 0-9 . _ @ + -`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "global" {
            return Ok(Self::global());
        }
        let expected = "expected global, user:<id> or chat:<id>";
        let Some((prefix, id)) = text.split_once(':') else {
            return Err(format!("scope {text:?}: {expected}"));
        };
        if prefix != "user" && prefix != "chat" {
            return Err(format!("scope {text:?}: {expected}"));
        }
        if id.is_empty() || id.len() > MAX_SCOPE_ID_BYTES {
            return Err(format!(
                "scope {text:?}: the id must be 1 to {MAX_SCOPE_ID_BYTES} bytes"
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')))
        {
            return Err(format!(
                "scope {text:?}: {bad:?} is not allowed in an id (letters, digits and . _ @ + -)"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The scope as stored and shown, e.g. "chat:42".
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What sort of thing a memory records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Something true about the world or the user.
    Fact,
    /// How the user likes things.
    Preference,
    /// Something decided.
    Decision,
    /// Something that happened.
    Event,
    /// Anything else; the default.
    Note,
    /// Something to do.
    Task,
    /// A condensed conversation.
    Summary,
}

impl Kind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [Self; 7] = [
        Self::Fact,
        Self::Preference,
        Self::Decision,
        Self::Event,
        Self::Note,
        Self::Task,
        Self::Summary,
    ];

    /// The name used on the wire and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fact => "fact",
            Self::Preference => "preference",
            Self::Decision => "decision",
            Self::Event => "event",
            Self::Note => "note",
            Self::Task => "task",
            Self::Summary => "summary",
        }
    }

    /// Parses a kind name; the empty string means [`Kind::Note`].
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::Note);
        }
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!("kind {text:?}: expected one of {}", names.join(", "))
            })
    }
}

/// Free-form labels on a memory, ordered so that stored JSON is stable.
pub type Metadata = BTreeMap<String, String>;

/// The limits every memory input is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest text, in bytes.
    pub max_text_bytes: usize,
}

const MAX_SOURCE_BYTES: usize = 256;
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY_BYTES: usize = 64;
const MAX_METADATA_VALUE_BYTES: usize = 1024;

/// The normalised form that decides whether two texts are the same memory: Unicode NFKC,
/// lower case, runs of white space as one space, no surrounding white space or final period.
pub fn normalize_text(text: &str) -> String {
    let folded: String = text.nfkc().flat_map(char::to_lowercase).collect();
    let mut normalized = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    while normalized.ends_with(['.', '!']) {
        normalized.pop();
    }
    normalized
}

/// Checks a memory's text: not blank, within the size limit.
pub fn check_text(text: &str, limits: Limits) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text: must not be empty".to_owned());
    }
    if text.len() > limits.max_text_bytes {
        return Err(format!(
            "text: {} bytes is more than the limit of {} bytes",
            text.len(),
            limits.max_text_bytes
        ));
    }
    Ok(())
}

/// Checks an importance: a finite number from 0 to 1.
pub fn check_importance(importance: f32) -> Result<(), String> {
    if importance.is_finite() && (0.0..=1.0).contains(&importance) {
        Ok(())
    } else {
        Err(format!("importance: {importance} is not between 0 and 1"))
    }
}

/// Checks a source label's size.
pub fn check_source(source: &str) -> Result<(), String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "source: {} bytes is more than the limit of {MAX_SOURCE_BYTES}",
            source.len()
        ));
    }
    Ok(())
}

/// Checks metadata: at most 32 entries, keys of 1–64 bytes of `A-Z a-z 0-9 _ . - :`, values
/// of at most 1024 bytes.
pub fn check_metadata<'a>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "metadata: {} entries is more than the limit of {MAX_METADATA_ENTRIES}",
            entries.len()
        ));
    }
    for (key, value) in entries {
        let key_allowed = !key.is_empty()
            && key.len() <= MAX_METADATA_KEY_BYTES
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
        if !key_allowed {
            return Err(format!(
                "metadata key {key:?}: must be 1 to {MAX_METADATA_KEY_BYTES} bytes of letters, digits and _ . - :"
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(format!(
                "metadata {key:?}: the value is more than {MAX_METADATA_VALUE_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// A memory as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// Row number in the database; the vector index and full-text index refer to it.
    pub sequence: i64,
    /// The public id, a UUID.
    pub id: String,
    /// Who may see it.
    pub scope: Scope,
    /// What sort of memory it is.
    pub kind: Kind,
    /// The memory itself.
    pub text: String,
    /// 0 to 1.
    pub importance: f32,
    /// Who or what produced it.
    pub source: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds of the last change to its content.
    pub updated_ms: i64,
    /// Unix milliseconds of the last recall or duplicate that touched it.
    pub accessed_ms: i64,
    /// Unix milliseconds after which it is no longer recalled.
    pub expires_ms: Option<i64>,
    /// Free-form labels.
    pub metadata: Metadata,
    /// The model whose vector it has; empty while it has none.
    pub embedding_model: String,
    /// How many earlier versions its history holds.
    pub version: u32,
}

/// An earlier version of a memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryVersion {
    /// 1 for the first text the memory had.
    pub version: u32,
    /// The text it had.
    pub text: String,
    /// The kind it had.
    pub kind: Kind,
    /// The importance it had.
    pub importance: f32,
    /// The labels it had.
    pub metadata: Metadata,
    /// Unix milliseconds when it was replaced.
    pub replaced_ms: i64,
    /// "superseded", "updated" or "imported".
    pub reason: String,
}

/// A validated request to store a memory.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMemory {
    /// The text as given.
    pub text: String,
    /// Where it goes.
    pub scope: Scope,
    /// Its kind.
    pub kind: Kind,
    /// 0 to 1.
    pub importance: f32,
    /// Who or what produced it.
    pub source: String,
    /// Unix milliseconds after which it is forgotten.
    pub expires_ms: Option<i64>,
    /// Free-form labels.
    pub metadata: Metadata,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_strictly() {
        for good in ["global", "user:alice", "chat:42", "user:a.b_c@d+e-f"] {
            assert_eq!(Scope::parse(good).map(|scope| scope.0), Ok(good.to_owned()));
        }
        for bad in [
            "", "Global", "user:", "chat", "team:x", "user:a b", "user:a:b", "chat:ä", "user:%",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Scope::parse(&format!("user:{}", "x".repeat(129))).is_err());
        assert!(
            Scope::parse("team:x")
                .unwrap_err()
                .contains("expected global, user:<id> or chat:<id>")
        );
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_named() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Ok(kind));
        }
        assert_eq!(Kind::parse(""), Ok(Kind::Note));
        let error = Kind::parse("gossip").unwrap_err();
        assert!(
            error.contains("\"gossip\"") && error.contains("preference"),
            "{error}"
        );
    }

    #[test]
    fn normalisation_folds_case_width_space_and_final_period() {
        assert_eq!(
            normalize_text("  The  user\tlikes TEA. "),
            "the user likes tea"
        );
        assert_eq!(normalize_text("ＴＥＡ!"), "tea");
        assert_ne!(normalize_text("tea"), normalize_text("coffee"));
    }

    #[test]
    fn inputs_are_checked() {
        let limits = Limits { max_text_bytes: 8 };
        assert!(check_text(" \n", limits).unwrap_err().contains("empty"));
        assert!(
            check_text("123456789", limits)
                .unwrap_err()
                .contains("9 bytes")
        );
        assert!(check_text("12345678", limits).is_ok());
        assert!(check_importance(f32::NAN).is_err());
        assert!(check_importance(1.5).is_err());
        assert!(check_importance(0.0).is_ok());
        let mut metadata = Metadata::new();
        metadata.insert("topic".into(), "food".into());
        assert!(check_metadata(metadata.iter()).is_ok());
        metadata.insert("bad key".into(), String::new());
        assert!(
            check_metadata(metadata.iter())
                .unwrap_err()
                .contains("bad key")
        );
    }
}
