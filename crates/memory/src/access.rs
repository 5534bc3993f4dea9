//! Who may read and write which scope. The caller comes from the socket's peer credentials;
//! `user:U` is U's, `global` is readable by every member of group `synos` (who alone reach the
//! socket). Every write, and every read of a scope that is neither the caller's own nor
//! `global`, is Cedar's decision (`memory.write:<scope>`, `memory.read:<scope>`), which
//! synos-policy audits.

use std::path::PathBuf;
use std::time::Duration;

use synos_common::caller::{Caller, account_name};
use synos_common::error::{ErrorKind, ServiceError};
use synos_proto::policy::v1::policy_client::PolicyClient;
use synos_proto::policy::v1::{AuthorizeRequest, Decision};
use tonic::Status;
use tonic::transport::Channel;

use crate::record::Scope;

/// How long memory waits for policy to accept a connection or decide.
const POLICY_TIMEOUT: Duration = Duration::from_secs(2);

/// Reading or writing a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Read,
    Write,
}

impl Use {
    fn action(self) -> &'static str {
        match self {
            Self::Read => "memory.read",
            Self::Write => "memory.write",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// The scope checks, with the connection to policy (made on first use, remade after a failure).
#[derive(Debug)]
pub(crate) struct Access {
    policy_socket: PathBuf,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl Access {
    /// Checks against the policy daemon on `policy_socket`.
    pub(crate) fn new(policy_socket: PathBuf) -> Self {
        Self {
            policy_socket,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// `Ok` when `caller` may `use` every one of `scopes`; otherwise PERMISSION_DENIED naming the
    /// first refused, or UNAVAILABLE when policy cannot decide (root, the SynOS services and the
    /// daemon's own account then go ahead, logged: memory must stay usable to its operators).
    pub(crate) async fn check(
        &self,
        caller: &Caller,
        scopes: &[Scope],
        use_: Use,
    ) -> Result<(), Status> {
        let principal = caller.identified()?;
        let own = own_scope(caller);
        let mut asked = Vec::new();
        for scope in scopes {
            let scope = scope.as_str();
            let free = use_ == Use::Read && (scope == "global" || Some(scope) == own.as_deref());
            if free || asked.contains(&scope) {
                continue;
            }
            asked.push(scope);
            match self.decide(principal, use_, scope).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ServiceError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "{principal} may not {} scope {scope} (no policy permits {}:{scope})",
                            use_.verb(),
                            use_.action()
                        ),
                    )
                    .into());
                }
                Err(problem) if caller.may_act_for_others() => {
                    tracing::warn!(%principal, %scope, %problem, "{} allowed without policy's decision", use_.action());
                }
                Err(problem) => {
                    return Err(ServiceError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "{}:{scope} needs policy's decision, which cannot be had: {problem}",
                            use_.action()
                        ),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The scopes an export or list that names none covers: all of them for those who may act
    /// for others (`None`), else the caller's own and `global`.
    pub(crate) fn default_scopes(caller: &Caller) -> Result<Option<Vec<Scope>>, Status> {
        caller.identified()?;
        if caller.may_act_for_others() {
            return Ok(None);
        }
        let mut scopes = vec![Scope::global()];
        scopes.extend(own_scope(caller).and_then(|own| Scope::parse(&own).ok()));
        Ok(Some(scopes))
    }

    /// Policy's decision, or why there is none.
    async fn decide(&self, principal: &str, use_: Use, scope: &str) -> Result<bool, String> {
        let mut client = PolicyClient::new(self.channel().await?);
        let request = AuthorizeRequest {
            principal: principal.to_owned(),
            action: format!("{}:{scope}", use_.action()),
            resource: String::new(),
        };
        match tokio::time::timeout(POLICY_TIMEOUT, client.authorize(request)).await {
            Ok(Ok(answer)) => Ok(answer.into_inner().decision() == Decision::Allow),
            Ok(Err(status)) => {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    *self.channel.lock().await = None;
                }
                Err(format!("policy did not decide: {}", status.message()))
            }
            Err(_) => Err(format!(
                "policy did not answer within {} s",
                POLICY_TIMEOUT.as_secs()
            )),
        }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref() {
            return Ok(channel.clone());
        }
        let channel = synos_common::client::connect(&self.policy_socket, POLICY_TIMEOUT)
            .await
            .map_err(|error| error.to_string())?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

/// `user:<login>` for a user caller.
fn own_scope(caller: &Caller) -> Option<String> {
    let principal = caller.principal();
    let login = account_name(principal);
    (login != principal).then(|| format!("user:{login}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_owns_their_user_scope_only() {
        let alice = Caller::resolve(1000, Some("alice"), 64_000);
        assert_eq!(own_scope(&alice).as_deref(), Some("user:alice"));
        let router = Caller::resolve(999, Some("synos-llm-router"), 64_000);
        assert_eq!(own_scope(&router), None);
        let scopes = Access::default_scopes(&alice).unwrap().unwrap();
        let names: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        assert_eq!(names, ["global", "user:alice"]);
        assert!(Access::default_scopes(&router).unwrap().is_none());
        assert_eq!(
            Access::default_scopes(&Caller::anonymous())
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn own_and_global_reads_need_no_policy_but_writes_and_others_do() {
        let access = Access::new(PathBuf::from("/nonexistent/policy.sock"));
        let alice = Caller::resolve(1000, Some("alice"), 64_000);
        let own = [Scope::global(), Scope::parse("user:alice").unwrap()];
        access.check(&alice, &own, Use::Read).await.unwrap();
        // Policy is unreachable: a user's write and a read of bob's are refused, not waved through.
        for (scopes, use_) in [
            (vec![Scope::parse("user:alice").unwrap()], Use::Write),
            (vec![Scope::parse("user:bob").unwrap()], Use::Read),
            (vec![Scope::parse("chat:c").unwrap()], Use::Read),
        ] {
            let refused = access.check(&alice, &scopes, use_).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        }
        // root goes ahead while policy is down.
        let root = Caller::resolve(0, Some("root"), 64_000);
        access
            .check(&root, &[Scope::parse("user:bob").unwrap()], Use::Write)
            .await
            .unwrap();
    }
}
