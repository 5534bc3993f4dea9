//! Cedar authorization over the built-in policy set: default deny, explicit permits.

use std::str::FromStr as _;

use cedar_policy::{
    Context, Entities, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request,
};

/// The policies SynOS ships with, by id. Anything they do not permit is denied.
const BUILT_IN_POLICIES: &[(&str, &str)] = &[
    (
        "users-chat-with-models",
        r#"permit(principal is User, action == Action::"llm.chat", resource);"#,
    ),
    (
        "services-use-models",
        r#"permit(principal is Service, action in [Action::"llm.chat", Action::"llm.embed"], resource);"#,
    ),
];

/// Why a request could not be decided.
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
    /// A policy does not parse.
    #[error("policy {id}: {reason}")]
    InvalidPolicy {
        /// The policy id.
        id: String,
        /// The parser's reason.
        reason: String,
    },
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
}

/// Decides requests against a fixed policy set.
#[derive(Debug)]
pub struct Authorizer {
    policies: PolicySet,
    engine: cedar_policy::Authorizer,
}

impl Authorizer {
    /// The authorizer with SynOS's built-in policies.
    pub fn with_built_in_policies() -> Result<Self, PolicyError> {
        let mut policies = PolicySet::new();
        for (id, text) in BUILT_IN_POLICIES {
            let invalid = |reason: String| PolicyError::InvalidPolicy {
                id: (*id).to_owned(),
                reason,
            };
            let policy = Policy::parse(Some(PolicyId::new(*id)), *text)
                .map_err(|error| invalid(error.to_string()))?;
            policies
                .add(policy)
                .map_err(|error| invalid(error.to_string()))?;
        }
        Ok(Self {
            policies,
            engine: cedar_policy::Authorizer::new(),
        })
    }

    /// How many policies are loaded.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Decides whether `principal` (a Cedar entity uid such as `User::"alice"`) may perform
    /// `action` (a name such as `llm.chat`) on `resource` (an entity uid).
    pub fn authorize(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
    ) -> Result<Decision, PolicyError> {
        let principal = parse_entity("principal", principal)?;
        let resource = parse_entity("resource", resource)?;
        let action = action_uid(action)?;
        let request =
            Request::new(principal, action, resource, Context::empty(), None).map_err(|error| {
                PolicyError::InvalidRequest {
                    field: "request",
                    reason: error.to_string(),
                }
            })?;
        let response = self
            .engine
            .is_authorized(&request, &self.policies, &Entities::empty());
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
        })
    }
}

fn parse_entity(field: &'static str, text: &str) -> Result<EntityUid, PolicyError> {
    if text.trim().is_empty() {
        return Err(PolicyError::InvalidRequest {
            field,
            reason: "must not be empty".to_owned(),
        });
    }
    EntityUid::from_str(text).map_err(|_| PolicyError::InvalidRequest {
        field,
        reason: "expected a Cedar entity uid such as User::\"alice\"".to_owned(),
    })
}

/// Actions are plain names; building the uid from parts means no quoting tricks can inject syntax.
fn action_uid(action: &str) -> Result<EntityUid, PolicyError> {
    let valid = !action.is_empty()
        && action.len() <= 256
        && action
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'));
    if !valid {
        return Err(PolicyError::InvalidRequest {
            field: "action",
            reason: "expected a name of letters, digits and . : _ - such as llm.chat".to_owned(),
        });
    }
    let action_type =
        EntityTypeName::from_str("Action").map_err(|error| PolicyError::InvalidRequest {
            field: "action",
            reason: error.to_string(),
        })?;
    Ok(EntityUid::from_type_name_and_id(
        action_type,
        EntityId::new(action),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer() -> Authorizer {
        Authorizer::with_built_in_policies().unwrap()
    }

    #[test]
    fn users_may_chat_and_nothing_else_by_default() {
        let allowed = authorizer()
            .authorize(r#"User::"alice""#, "llm.chat", r#"Route::"default""#)
            .unwrap();
        assert!(allowed.allowed);
        assert_eq!(allowed.determining_policies, vec!["users-chat-with-models"]);

        let denied = authorizer()
            .authorize(r#"User::"alice""#, "tool.exec:rm", r#"Tool::"rm""#)
            .unwrap();
        assert!(!denied.allowed);
        assert!(denied.determining_policies.is_empty());
    }

    #[test]
    fn malformed_fields_are_named() {
        let error = authorizer()
            .authorize("alice", "llm.chat", r#"Route::"x""#)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("principal: expected a Cedar entity uid"),
            "{error}"
        );
        let error = authorizer()
            .authorize(r#"User::"a""#, r#"llm.chat", resource"#, r#"Route::"x""#)
            .unwrap_err();
        assert!(error.to_string().starts_with("action:"), "{error}");
        let error = authorizer()
            .authorize(r#"User::"a""#, "llm.chat", "")
            .unwrap_err();
        assert_eq!(error.to_string(), "resource: must not be empty");
    }
}
