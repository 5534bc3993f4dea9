//! The JSON Lines format of `Export` and `Import`: one memory per line with every field, its
//! history and its vector, so that an export imported into an empty store gives it back as it was.
//!
//! Times are Unix milliseconds (what the store keeps, so nothing is rounded); the vector is
//! base64 of little-endian f32 values (exact, and a third of the size of decimal numbers).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::record::{self, Kind, Limits, Memory, MemoryVersion, Metadata, Scope};
use crate::store::Exported;

/// The format's version, written in every line; lines of a later version are refused.
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    synos_memory: u32,
    id: String,
    scope: String,
    kind: String,
    text: String,
    importance: f32,
    source: String,
    created_ms: i64,
    updated_ms: i64,
    accessed_ms: i64,
    expires_ms: Option<i64>,
    metadata: Metadata,
    embedding_model: String,
    embedding: Option<String>,
    version: u32,
    history: Vec<HistoryLine>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryLine {
    version: u32,
    text: String,
    kind: String,
    importance: f32,
    metadata: Metadata,
    replaced_ms: i64,
    reason: String,
}

/// One memory as a line of JSON (without the newline).
pub(crate) fn to_line(exported: &Exported) -> String {
    let Exported {
        memory,
        history,
        embedding,
    } = exported;
    let line = Line {
        synos_memory: FORMAT_VERSION,
        id: memory.id.clone(),
        scope: memory.scope.to_string(),
        kind: memory.kind.name().to_owned(),
        text: memory.text.clone(),
        importance: memory.importance,
        source: memory.source.clone(),
        created_ms: memory.created_ms,
        updated_ms: memory.updated_ms,
        accessed_ms: memory.accessed_ms,
        expires_ms: memory.expires_ms,
        metadata: memory.metadata.clone(),
        embedding_model: memory.embedding_model.clone(),
        embedding: embedding.as_ref().map(|vector| {
            let bytes: Vec<u8> = vector
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect();
            BASE64.encode(bytes)
        }),
        version: memory.version,
        history: history
            .iter()
            .map(|version| HistoryLine {
                version: version.version,
                text: version.text.clone(),
                kind: version.kind.name().to_owned(),
                importance: version.importance,
                metadata: version.metadata.clone(),
                replaced_ms: version.replaced_ms,
                reason: version.reason.clone(),
            })
            .collect(),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// Parses and checks one line; the error says what is wrong, for "line N: …".
/// The most earlier versions one imported memory may carry.
const MAX_HISTORY_VERSIONS: usize = 10_000;

pub(crate) fn from_line(text: &str, limits: Limits) -> Result<Exported, String> {
    let line: Line =
        serde_json::from_str(text).map_err(|error| format!("not a memory: {error}"))?;
    if line.synos_memory != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (this daemon reads version {FORMAT_VERSION})",
            line.synos_memory
        ));
    }
    uuid::Uuid::parse_str(&line.id).map_err(|_| format!("id {:?}: not a UUID", line.id))?;
    let scope = Scope::parse(&line.scope)?;
    let kind = Kind::parse(&line.kind)?;
    record::check_text(&line.text, limits)?;
    record::check_importance(line.importance)?;
    record::check_source(&line.source)?;
    record::check_metadata(line.metadata.iter())?;
    if line.updated_ms < line.created_ms {
        return Err("updated_ms: earlier than created_ms".to_owned());
    }
    let embedding = match &line.embedding {
        None => None,
        Some(encoded) => {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|error| format!("embedding: not base64: {error}"))?;
            if bytes.is_empty() || bytes.len() % 4 != 0 {
                return Err("embedding: not a list of 32-bit floats".to_owned());
            }
            let vector: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                .collect();
            if vector.iter().any(|value| !value.is_finite()) {
                return Err("embedding: holds a value that is not a finite number".to_owned());
            }
            if line.embedding_model.is_empty() {
                return Err("embedding: given without embedding_model".to_owned());
            }
            Some(vector)
        }
    };
    if line.history.len() > MAX_HISTORY_VERSIONS {
        return Err(format!(
            "history: {} versions, more than the {MAX_HISTORY_VERSIONS} one memory may carry",
            line.history.len()
        ));
    }
    let mut history = Vec::with_capacity(line.history.len());
    for version in line.history {
        // The same limits as Remember and Update: an import is no way around them.
        let at = |error: String| format!("history version {}: {error}", version.version);
        record::check_text(&version.text, limits).map_err(at)?;
        record::check_importance(version.importance).map_err(at)?;
        record::check_metadata(version.metadata.iter()).map_err(at)?;
        history.push(MemoryVersion {
            version: version.version,
            text: version.text,
            kind: Kind::parse(&version.kind).map_err(|error| format!("history: {error}"))?,
            importance: version.importance,
            metadata: version.metadata,
            replaced_ms: version.replaced_ms,
            reason: version.reason,
        });
    }
    Ok(Exported {
        memory: Memory {
            sequence: 0,
            id: line.id,
            scope,
            kind,
            text: line.text,
            importance: line.importance,
            source: line.source,
            created_ms: line.created_ms,
            updated_ms: line.updated_ms,
            accessed_ms: line.accessed_ms,
            expires_ms: line.expires_ms,
            metadata: line.metadata,
            embedding_model: if embedding.is_some() {
                line.embedding_model
            } else {
                String::new()
            },
            version: line.version,
        },
        history,
        embedding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_text_bytes: 1000,
    };

    fn sample() -> Exported {
        let mut metadata = Metadata::new();
        metadata.insert("topic".into(), "drinks".into());
        Exported {
            memory: Memory {
                sequence: 0,
                id: "0190a0b2-7c4e-7a1b-9f3e-1234567890ab".into(),
                scope: Scope::parse("user:alice").unwrap(),
                kind: Kind::Preference,
                text: "Alice drinks her tea without sugar \"always\"\n".into(),
                importance: 0.7,
                source: "synosctl".into(),
                created_ms: 1_700_000_000_000,
                updated_ms: 1_700_000_000_500,
                accessed_ms: 1_700_000_100_000,
                expires_ms: Some(1_800_000_000_000),
                metadata: metadata.clone(),
                embedding_model: "all-MiniLM-L6-v2".into(),
                version: 1,
            },
            history: vec![MemoryVersion {
                version: 1,
                text: "Alice drinks tea".into(),
                kind: Kind::Fact,
                importance: 0.5,
                metadata,
                replaced_ms: 1_700_000_000_500,
                reason: "superseded".into(),
            }],
            embedding: Some(vec![0.1, -0.2, 0.333_333_34, 1.0e-7]),
        }
    }

    #[test]
    fn a_line_round_trips_exactly() {
        let exported = sample();
        let line = to_line(&exported);
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(from_line(&line, LIMITS), Ok(exported));
    }

    #[test]
    fn hostile_lines_are_refused_with_the_reason() {
        let good = to_line(&sample());
        let cases = [
            ("{", "not a memory"),
            (&good.replace("user:alice", "team:x") as &str, "scope"),
            (
                &good.replace("\"preference\"", "\"gossip\""),
                "kind \"gossip\"",
            ),
            (
                &good.replace("\"synos_memory\":1", "\"synos_memory\":2"),
                "format version 2",
            ),
            (&good.replace("0190a0b2-", "nope-"), "not a UUID"),
            (
                &good.replace("\"importance\":0.7", "\"importance\":7.0"),
                "importance",
            ),
            (
                &good.replace("\"source\"", "\"surprise\":1,\"source\""),
                "unknown field",
            ),
        ];
        for (line, expected) in cases {
            let error = from_line(line, LIMITS).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        let mut no_model = sample();
        no_model.memory.embedding_model.clear();
        let error = from_line(&to_line(&no_model), LIMITS).unwrap_err();
        assert!(error.contains("without embedding_model"), "{error}");
    }
}
