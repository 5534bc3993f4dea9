//! Cedar authorization: the shipped schema, policies from the policy directory validated
//! against it, and decisions over entities built from each request. Default deny.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

/// The schema every policy is validated against; shipped as
/// `/usr/share/synos/policy/synos.cedarschema` for policy authors.
pub const SCHEMA: &str = include_str!("../../../packaging/policy/synos.cedarschema");
/// The policies that apply when the policy directory does not exist; shipped as
/// `/etc/synos/policy.d/00-defaults.cedar`.
pub const DEFAULT_POLICIES: &str = include_str!("../../../packaging/policy/00-defaults.cedar");
const DEFAULTS_NAME: &str = "built-in 00-defaults.cedar";

/// Why a request could not be decided or a policy set not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A field of the request is malformed.
    #[error("{field}: {reason}")]
    InvalidRequest {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A policy file cannot be used; the message names the file and line.
    #[error("{0}")]
    InvalidPolicies(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> PolicyError {
    PolicyError::InvalidRequest {
        field,
        reason: reason.into(),
    }
}

/// Names of tools, routes and ids in action suffixes: no quoting, nothing to inject.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A validated policy set and where each policy came from.
#[derive(Debug, Clone)]
pub struct PolicyFiles {
    policies: PolicySet,
    /// The files read, in order; the built-in defaults' name when the directory is absent.
    pub files: Vec<String>,
}

impl PolicyFiles {
    /// Reads `directory/*.cedar` in name order (or the built-in defaults when the directory
    /// does not exist), parses and validates them against [`SCHEMA`].
    pub fn load(directory: &Path) -> Result<Self, PolicyError> {
        let sources = match std::fs::read_dir(directory) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                vec![(DEFAULTS_NAME.to_owned(), DEFAULT_POLICIES.to_owned())]
            }
            Err(error) => {
                return Err(PolicyError::InvalidPolicies(format!(
                    "{}: cannot read the policy directory: {error}",
                    directory.display()
                )));
            }
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| {
                        path.extension()
                            .is_some_and(|extension| extension == "cedar")
                    })
                    .collect();
                paths.sort();
                let mut sources = Vec::with_capacity(paths.len());
                for path in paths {
                    let text = std::fs::read_to_string(&path).map_err(|error| {
                        PolicyError::InvalidPolicies(format!(
                            "{}: cannot read: {error}",
                            path.display()
                        ))
                    })?;
                    sources.push((path.display().to_string(), text));
                }
                sources
            }
        };
        Self::from_sources(&sources)
    }

    /// Parses and validates `(name, text)` pairs as one policy set.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, PolicyError> {
        let mut policies = PolicySet::new();
        // Where each policy id came from, to put validation errors in their file.
        let mut origins: HashMap<String, usize> = HashMap::new();
        for (index, (name, text)) in sources.iter().enumerate() {
            let parsed = PolicySet::from_str(text).map_err(|errors| {
                let first = errors.iter().next();
                let offset = first
                    .and_then(|error| first_label_offset(error))
                    .unwrap_or(0);
                let message = first.map_or_else(|| errors.to_string(), ToString::to_string);
                PolicyError::InvalidPolicies(format!(
                    "{name}:{}: {message}",
                    Location::of(text, offset)
                ))
            })?;
            // Cedar names them policy0, policy1, ... in the order they appear in the file.
            let mut numbered: Vec<&Policy> = parsed.policies().collect();
            numbered.sort_by_key(|policy| {
                policy
                    .id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            let stem = Path::new(name)
                .file_stem()
                .map_or_else(|| name.clone(), |stem| stem.to_string_lossy().into_owned());
            for (number, policy) in numbered.into_iter().enumerate() {
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{stem}#{}", number + 1), ToOwned::to_owned);
                if let Some(other) = origins.get(&id) {
                    let offset = text.find(&format!("@id(\"{id}\")")).unwrap_or(0);
                    return Err(PolicyError::InvalidPolicies(format!(
                        "{name}:{}: policy id {id:?} is already used in {}",
                        Location::of(text, offset),
                        sources[*other].0
                    )));
                }
                origins.insert(id.clone(), index);
                policies
                    .add(policy.new_id(PolicyId::new(&id)))
                    .map_err(|error| PolicyError::InvalidPolicies(format!("{name}: {error}")))?;
            }
        }
        let schema = schema();
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if let Some(error) = validation.validation_errors().next() {
            let id = error.policy_id().to_string();
            let (name, location) = origins.get(&id).map_or_else(
                || ("policies".to_owned(), String::new()),
                |index| {
                    let (name, text) = &sources[*index];
                    let offset = first_label_offset(error).unwrap_or(0);
                    (name.clone(), format!("{}: ", Location::of(text, offset)))
                },
            );
            return Err(PolicyError::InvalidPolicies(format!(
                "{name}:{location}policy {id:?} does not fit the schema: {error}"
            )));
        }
        Ok(Self {
            policies,
            files: sources.iter().map(|(name, _)| name.clone()).collect(),
        })
    }

    /// How many policies there are.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }
}

fn first_label_offset(diagnostic: &dyn Diagnostic) -> Option<usize> {
    diagnostic.labels()?.next().map(|label| label.offset())
}

/// 1-based line and column of a byte offset.
struct Location {
    line: usize,
    column: usize,
}

impl Location {
    fn of(text: &str, offset: usize) -> Self {
        let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |last| last.chars().count())
            + 1;
        Self { line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.line, self.column)
    }
}

fn schema() -> &'static Schema {
    static SCHEMA_PARSED: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    SCHEMA_PARSED.get_or_init(|| {
        #[expect(
            clippy::expect_used,
            reason = "the schema is part of the program; a unit test parses it"
        )]
        Schema::from_cedarschema_str(SCHEMA)
            .expect("the built-in schema parses")
            .0
    })
}

/// The attributes policies see on a tool, from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAttributes {
    /// `risk`.
    pub risk: String,
    /// `network`.
    pub network: bool,
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Ids of the policies that determined it; empty for the default deny.
    pub determining_policies: Vec<String>,
    /// Evaluation errors; a policy that errors is skipped, which can only deny.
    pub errors: Vec<String>,
    /// The request as decided, with the resource an action suffix implied.
    pub action: String,
    /// The resource uid decided on.
    pub resource: String,
}

/// Decides requests against one policy set.
#[derive(Debug)]
pub struct Authorizer {
    files: PolicyFiles,
    tools: BTreeMap<String, ToolAttributes>,
    engine: cedar_policy::Authorizer,
}

/// The resource type each action applies to, which an action's suffix names.
fn resource_type(action: &str) -> Option<&'static str> {
    Some(match action {
        "llm.chat" | "llm.embed" | "llm.route" => "Route",
        "tool.exec" => "Tool",
        "memory.read" | "memory.write" => "Scope",
        "llm.manage" | "policy.reload" | "audit.read" | "doctor.approve" | "doctor.deny"
        | "doctor.repair" => "System",
        _ => return None,
    })
}

impl Authorizer {
    /// An authorizer over `files`, with `tools`' attributes.
    pub fn new(files: PolicyFiles, tools: BTreeMap<String, ToolAttributes>) -> Self {
        Self {
            files,
            tools,
            engine: cedar_policy::Authorizer::new(),
        }
    }

    /// The policies in force.
    pub fn files(&self) -> &PolicyFiles {
        &self.files
    }

    /// Decides whether `principal` (an entity uid such as `User::"alice"`) may perform
    /// `action` (`llm.chat`, `tool.exec:ls`, `memory.read:user:alice`, ...) on `resource` (an
    /// entity uid, or empty when the action's suffix names it).
    pub fn authorize(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
    ) -> Result<Decision, PolicyError> {
        let principal = parse_entity("principal", principal)?;
        let (action_name, suffix) = match action.split_once(':') {
            Some((name, suffix)) => (name, Some(suffix)),
            None => (action, None),
        };
        let Some(resource_type_name) = resource_type(action_name) else {
            return Err(invalid(
                "action",
                "unknown action; known: llm.chat, llm.embed, llm.route, llm.manage, tool.exec, \
                 memory.read, memory.write, policy.reload, audit.read, doctor.approve, doctor.deny, \
                 doctor.repair (a resource may follow a colon: tool.exec:ls)",
            ));
        };
        let resource = match (suffix, resource.trim()) {
            (None, "") => {
                if resource_type_name == "System" {
                    EntityUid::from_type_name_and_id(type_name("System"), EntityId::new("synos"))
                } else {
                    return Err(invalid(
                        "resource",
                        format!(
                            "must not be empty (or name it in the action, e.g. {action_name}:NAME)"
                        ),
                    ));
                }
            }
            (Some(suffix), "") => {
                check_suffix(resource_type_name, suffix)?;
                EntityUid::from_type_name_and_id(
                    type_name(resource_type_name),
                    EntityId::new(suffix),
                )
            }
            (suffix, text) => {
                let uid = parse_entity("resource", text)?;
                if let Some(suffix) = suffix
                    && (uid.id().unescaped() != suffix
                        || uid.type_name().to_string() != resource_type_name)
                {
                    return Err(invalid(
                        "resource",
                        format!(
                            "names another resource than the action's {resource_type_name}::{suffix:?}"
                        ),
                    ));
                }
                uid
            }
        };
        let action_uid =
            EntityUid::from_type_name_and_id(type_name("Action"), EntityId::new(action_name));
        let entities = self.entities(&principal, &resource)?;
        let resource_text = resource.to_string();
        let request = Request::new(
            principal,
            action_uid,
            resource,
            Context::empty(),
            Some(schema()),
        )
        .map_err(|error| invalid("request", error.to_string()))?;
        let response = self
            .engine
            .is_authorized(&request, &self.files.policies, &entities);
        Ok(Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            determining_policies: response
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect(),
            errors: response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect(),
            action: action.to_owned(),
            resource: resource_text,
        })
    }

    /// The principal and resource as entities with the attributes the schema gives them.
    fn entities(
        &self,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Entities, PolicyError> {
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let principal_entity = match principal.type_name().to_string().as_str() {
            "User" | "Chat" | "Service" => Entity::new(
                principal.clone(),
                HashMap::from([("id".to_owned(), string(principal.id().unescaped()))]),
                HashSet::new(),
            ),
            _ => {
                return Err(invalid(
                    "principal",
                    "unknown principal type; expected User, Chat or Service, e.g. User::\"alice\"",
                ));
            }
        }
        .map_err(|error| invalid("principal", error.to_string()))?;
        let id = resource.id().unescaped();
        let attributes = match resource.type_name().to_string().as_str() {
            "Tool" => {
                let tool = self.tools.get(id);
                HashMap::from([
                    (
                        "risk".to_owned(),
                        string(tool.map_or("unconfigured", |tool| tool.risk.as_str())),
                    ),
                    (
                        "network".to_owned(),
                        RestrictedExpression::new_bool(tool.is_some_and(|tool| tool.network)),
                    ),
                ])
            }
            "Scope" => {
                let (kind, owner) = parse_scope(id)?;
                HashMap::from([
                    ("kind".to_owned(), string(kind)),
                    ("owner".to_owned(), string(owner)),
                ])
            }
            _ => HashMap::new(),
        };
        let resource_entity = Entity::new(resource.clone(), attributes, HashSet::new())
            .map_err(|error| invalid("resource", error.to_string()))?;
        let entities = if principal == resource {
            vec![principal_entity]
        } else {
            vec![principal_entity, resource_entity]
        };
        Entities::from_entities(entities, Some(schema()))
            .map_err(|error| invalid("request", error.to_string()))
    }
}

fn type_name(name: &str) -> EntityTypeName {
    #[expect(
        clippy::expect_used,
        reason = "only called with the schema's fixed type names"
    )]
    EntityTypeName::from_str(name).expect("a fixed entity type name parses")
}

fn check_suffix(resource_type_name: &str, suffix: &str) -> Result<(), PolicyError> {
    if resource_type_name == "Scope" {
        parse_scope(suffix).map(drop)
    } else if is_plain_name(suffix) {
        Ok(())
    } else {
        Err(invalid(
            "action",
            "the resource after the colon must be a name of letters, digits, '.', '_' and '-'",
        ))
    }
}

/// `global`, `user:<id>` or `chat:<id>` as (kind, owner).
fn parse_scope(scope: &str) -> Result<(&str, &str), PolicyError> {
    match scope.split_once(':') {
        None if scope == "global" => Ok(("global", "")),
        Some((kind @ ("user" | "chat"), owner)) if is_plain_name(owner) => Ok((kind, owner)),
        _ => Err(invalid(
            "resource",
            "a memory scope is global, user:<id> or chat:<id>",
        )),
    }
}

fn parse_entity(field: &'static str, text: &str) -> Result<EntityUid, PolicyError> {
    if text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    EntityUid::from_str(text.trim())
        .map_err(|_| invalid(field, "expected a Cedar entity uid such as User::\"alice\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> BTreeMap<String, ToolAttributes> {
        BTreeMap::from([
            (
                "ls".to_owned(),
                ToolAttributes {
                    risk: "low".to_owned(),
                    network: false,
                },
            ),
            (
                "fetch".to_owned(),
                ToolAttributes {
                    risk: "low".to_owned(),
                    network: true,
                },
            ),
            (
                "rm".to_owned(),
                ToolAttributes {
                    risk: "high".to_owned(),
                    network: false,
                },
            ),
        ])
    }

    fn defaults() -> Authorizer {
        let files =
            PolicyFiles::from_sources(&[(DEFAULTS_NAME.to_owned(), DEFAULT_POLICIES.to_owned())])
                .unwrap();
        Authorizer::new(files, tools())
    }

    fn decide(
        authorizer: &Authorizer,
        principal: &str,
        action: &str,
        resource: &str,
    ) -> (bool, Vec<String>) {
        let decision = authorizer.authorize(principal, action, resource).unwrap();
        assert!(decision.errors.is_empty(), "{:?}", decision.errors);
        (decision.allowed, decision.determining_policies)
    }

    #[test]
    fn shipped_defaults_make_the_system_usable_and_nothing_more() {
        let authorizer = defaults();
        let cases: &[(&str, &str, &str, bool, &[&str])] = &[
            (
                r#"User::"alice""#,
                "llm.chat",
                r#"Route::"default""#,
                true,
                &["users-use-models"],
            ),
            (
                r#"Service::"synos-memory""#,
                "llm.embed",
                r#"Route::"embed""#,
                true,
                &["services-use-models"],
            ),
            (
                r#"User::"alice""#,
                "memory.read:user:alice",
                "",
                true,
                &["users-own-their-memory"],
            ),
            (
                r#"User::"alice""#,
                "memory.write:user:alice",
                "",
                true,
                &["users-own-their-memory"],
            ),
            (r#"User::"alice""#, "memory.read:user:bob", "", false, &[]),
            (
                r#"User::"alice""#,
                "memory.read:global",
                "",
                true,
                &["everyone-reads-global-memory"],
            ),
            (r#"User::"alice""#, "memory.write:global", "", false, &[]),
            (
                r#"Chat::"42""#,
                "memory.write:chat:42",
                "",
                true,
                &["chats-own-their-memory"],
            ),
            (r#"Chat::"42""#, "memory.read:chat:43", "", false, &[]),
            (
                r#"User::"alice""#,
                "tool.exec:ls",
                "",
                true,
                &["users-run-low-risk-tools"],
            ),
            (r#"User::"alice""#, "tool.exec:rm", "", false, &[]),
            (r#"User::"alice""#, "tool.exec:unknown", "", false, &[]),
            (
                r#"Chat::"42""#,
                "tool.exec:ls",
                "",
                true,
                &["chats-run-low-risk-offline-tools"],
            ),
            (
                r#"Chat::"42""#,
                "tool.exec:fetch",
                "",
                false,
                &["no-network-tools-for-chats"],
            ),
            (r#"User::"alice""#, "policy.reload", "", false, &[]),
            (
                r#"User::"root""#,
                "policy.reload",
                "",
                true,
                &["root-administers-policy"],
            ),
            (
                r#"User::"alice""#,
                "doctor.approve:drain-provider",
                "",
                false,
                &[],
            ),
            (
                r#"User::"root""#,
                "doctor.deny:drain-provider",
                "",
                true,
                &["root-decides-the-doctors-queue"],
            ),
            (
                r#"Service::"synos-doctor""#,
                "doctor.repair",
                r#"System::"restart-unit:synos-memory.service""#,
                true,
                &["the-doctor-repairs-on-its-own"],
            ),
            (
                r#"Service::"synos-router""#,
                "doctor.repair",
                r#"System::"cool-provider:openai""#,
                false,
                &[],
            ),
            // Memory: another user's scope and global writes are not a user's.
            (r#"User::"alice""#, "memory.read:user:bob", "", false, &[]),
            (r#"User::"alice""#, "memory.write:global", "", false, &[]),
            (
                r#"User::"alice""#,
                "memory.write:chat:garden",
                "",
                true,
                &["users-share-chat-memory"],
            ),
            (
                r#"User::"root""#,
                "memory.write:user:bob",
                "",
                true,
                &["root-manages-all-memory"],
            ),
            // The router's administration: root and the doctor, no user.
            (r#"User::"alice""#, "llm.manage", "", false, &[]),
            (
                r#"User::"root""#,
                "llm.manage",
                "",
                true,
                &["root-manages-the-router"],
            ),
            (
                r#"Service::"synos-doctor""#,
                "llm.manage",
                "",
                true,
                &["the-doctor-drains-and-cools-providers"],
            ),
            (r#"User::"alice""#, "audit.read", "", false, &[]),
        ];
        for (principal, action, resource, allowed, policies) in cases {
            let (decided, determining) = decide(&authorizer, principal, action, resource);
            assert_eq!(decided, *allowed, "{principal} {action} {resource}");
            assert_eq!(determining, *policies, "{principal} {action} {resource}");
        }
    }

    #[test]
    fn custom_policies_apply_and_forbid_wins() {
        let custom = r#"
            @id("bob-runs-rm")
            permit (principal == User::"bob", action == Action::"tool.exec", resource == Tool::"rm");
            permit (principal == User::"mallory", action == Action::"tool.exec", resource == Tool::"rm");
            @id("nobody-is-mallory")
            forbid (principal == User::"mallory", action, resource);
        "#;
        let files = PolicyFiles::from_sources(&[
            ("00-defaults.cedar".to_owned(), DEFAULT_POLICIES.to_owned()),
            ("50-local.cedar".to_owned(), custom.to_owned()),
        ])
        .unwrap();
        assert_eq!(files.policy_count(), 20);
        let authorizer = Authorizer::new(files, tools());
        assert_eq!(
            decide(&authorizer, r#"User::"bob""#, "tool.exec", r#"Tool::"rm""#),
            (true, vec!["bob-runs-rm".to_owned()])
        );
        let (allowed, policies) = decide(
            &authorizer,
            r#"User::"mallory""#,
            "llm.chat",
            r#"Route::"x""#,
        );
        assert!(!allowed);
        assert_eq!(policies, vec!["nobody-is-mallory"]);
        // Unnamed policies are numbered in their file.
        let (allowed, _) = decide(&authorizer, r#"User::"mallory""#, "tool.exec:rm", "");
        assert!(!allowed);
    }

    #[test]
    fn invalid_policies_are_refused_with_file_and_line() {
        let syntax =
            "permit (principal, action, resource);\n\npermit (principal action, resource);\n";
        let error = PolicyFiles::from_sources(&[(
            "/etc/synos/policy.d/10-bad.cedar".to_owned(),
            syntax.to_owned(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("/etc/synos/policy.d/10-bad.cedar:3:"),
            "{error}"
        );

        let schema_misfit = "// comment\n@id(\"typo\")\npermit (principal is Usr, action == Action::\"llm.chat\", resource);\n";
        let error =
            PolicyFiles::from_sources(&[("20-typo.cedar".to_owned(), schema_misfit.to_owned())])
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("20-typo.cedar:3:"), "{error}");
        assert!(error.contains("\"typo\""), "{error}");

        let attribute = "@id(\"no-such-attribute\")\npermit (principal is User, action == Action::\"tool.exec\", resource is Tool)\nwhen { resource.owner == \"x\" };\n";
        let error =
            PolicyFiles::from_sources(&[("30-attr.cedar".to_owned(), attribute.to_owned())])
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("30-attr.cedar:3:"), "{error}");

        let duplicate = "@id(\"users-use-models\")\npermit (principal, action, resource);\n";
        let error = PolicyFiles::from_sources(&[
            ("00-defaults.cedar".to_owned(), DEFAULT_POLICIES.to_owned()),
            ("40-dup.cedar".to_owned(), duplicate.to_owned()),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("40-dup.cedar:1:"), "{error}");
        assert!(
            error.contains("already used in 00-defaults.cedar"),
            "{error}"
        );
    }

    #[test]
    fn malformed_requests_are_named() {
        let authorizer = defaults();
        let error = |principal: &str, action: &str, resource: &str| {
            authorizer
                .authorize(principal, action, resource)
                .unwrap_err()
                .to_string()
        };
        assert!(
            error("alice", "llm.chat", r#"Route::"x""#)
                .starts_with("principal: expected a Cedar entity uid")
        );
        assert!(
            error(r#"User::"a""#, "llm.chat\", resource", r#"Route::"x""#)
                .starts_with("action: unknown action")
        );
        assert_eq!(
            error(r#"User::"a""#, "llm.chat", ""),
            "resource: must not be empty (or name it in the action, e.g. llm.chat:NAME)"
        );
        assert!(
            error(r#"Robot::"r2""#, "llm.chat", r#"Route::"x""#)
                .starts_with("principal: unknown principal type")
        );
        assert!(
            error(r#"User::"a""#, "memory.read:everything", "")
                .starts_with("resource: a memory scope")
        );
        assert!(
            error(r#"User::"a""#, "tool.exec:ls", r#"Tool::"rm""#)
                .starts_with("resource: names another resource")
        );
        assert!(
            error(r#"User::"a""#, "tool.exec:ls\"", "")
                .starts_with("action: the resource after the colon")
        );
        assert!(error(r#"User::"a""#, "llm.chat", r#"Tool::"ls""#).starts_with("request:"));
    }
}
