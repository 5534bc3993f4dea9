//! Who calls: the caller's identity from the kernel's credentials on the Unix socket
//! (`SO_PEERCRED`), never from a request field.
//!
//! uid 0 is the administrator `User::"root"`; a SynOS daemon's own system user (`synos-memory`,
//! …) is `Service::"synos-memory"`; any other uid is `User::"<login name>"`. A principal named
//! in a request is honoured only from a caller that may act for others (the administrator, a
//! SynOS service, or the account the daemon itself runs as, which could read all its data
//! anyway); from anyone else it must name the caller, or the call is refused. A connection
//! without credentials (the loopback TCP listener) is anonymous and may not act as anyone.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::transport::server::UdsConnectInfo;

use crate::error::{ErrorKind, ServiceError};
use crate::identity::ALL_DAEMONS;

/// The longest principal accepted in a request, in bytes (`User::"…"` with a 128-byte name fits
/// many times over); longer ones are refused before they reach a log, a label or the audit log.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

/// What a caller may do beyond acting as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// uid 0.
    Administrator,
    /// A SynOS daemon's own system user: acts on users' behalf (the router for an HTTP key's
    /// principal, the doctor for the operator who approves).
    Service,
    /// The account this daemon itself runs as, other than root (a developer running every daemon
    /// as themself): it owns the daemon's files and could read everything the daemon holds, so
    /// refusing it would protect nothing.
    SameAccount,
    /// Any other local user.
    User,
    /// No credentials on the connection: the loopback TCP listener.
    Anonymous,
}

/// The caller of one request, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    principal: String,
    uid: Option<u32>,
    standing: Standing,
}

impl Caller {
    /// The caller of `request`, from the peer credentials tonic records for Unix-socket
    /// connections; anonymous when there are none.
    pub fn of<Message>(request: &tonic::Request<Message>) -> Self {
        request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map_or_else(Self::anonymous, |credentials| {
                Self::from_uid(credentials.uid())
            })
    }

    /// The caller running as `uid`, resolved through the system's user database.
    pub fn from_uid(uid: u32) -> Self {
        Self::resolve(uid, user_name(uid).as_deref(), own_uid())
    }

    /// A caller without credentials.
    pub fn anonymous() -> Self {
        Self {
            principal: String::new(),
            uid: None,
            standing: Standing::Anonymous,
        }
    }

    /// The caller running as `uid` whose login name is `name` (`None`: unknown to the user
    /// database), seen by a daemon running as `own_uid`.
    pub fn resolve(uid: u32, name: Option<&str>, own_uid: u32) -> Self {
        let service =
            name.filter(|name| uid != 0 && ALL_DAEMONS.iter().any(|(_, binary)| binary == name));
        let (principal, standing) = if uid == 0 {
            (entity("User", "root"), Standing::Administrator)
        } else if let Some(service) = service {
            (entity("Service", service), Standing::Service)
        } else {
            // `#` cannot begin a login name, so an unknown uid can never pass for a user.
            let name = name.map_or_else(|| format!("#{uid}"), str::to_owned);
            let standing = if uid == own_uid {
                Standing::SameAccount
            } else {
                Standing::User
            };
            (entity("User", &name), standing)
        };
        Self {
            principal,
            uid: Some(uid),
            standing,
        }
    }

    /// The caller as a Cedar entity uid, e.g. `User::"alice"`; empty when anonymous.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The caller's uid; `None` when anonymous.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// What the caller may do beyond acting as itself.
    pub fn standing(&self) -> Standing {
        self.standing
    }

    /// Whether the caller is root.
    pub fn is_administrator(&self) -> bool {
        self.standing == Standing::Administrator
    }

    /// Whether a principal the caller names in a request is honoured.
    pub fn may_act_for_others(&self) -> bool {
        matches!(
            self.standing,
            Standing::Administrator | Standing::Service | Standing::SameAccount
        )
    }

    /// The caller's own principal; `Unauthenticated` when the connection carries no credentials.
    pub fn identified(&self) -> Result<&str, ServiceError> {
        if self.standing == Standing::Anonymous {
            Err(ServiceError::new(
                ErrorKind::Unauthenticated,
                "this call needs the caller's identity, which only the Unix socket proves \
                 (its peer credentials); the TCP listener has none",
            ))
        } else {
            Ok(&self.principal)
        }
    }

    /// The principal a request acts as: the caller itself when `claimed` is empty; `claimed`
    /// (in canonical form, see [`canonical_principal`]) when the caller may act for others or
    /// `claimed` names the caller; otherwise `PermissionDenied`.
    pub fn acting_as(&self, claimed: &str) -> Result<String, ServiceError> {
        let own = self.identified()?;
        if claimed.trim().is_empty() {
            return Ok(own.to_owned());
        }
        let claimed = canonical_principal(claimed)?;
        if claimed == own || self.may_act_for_others() {
            Ok(claimed)
        } else {
            Err(ServiceError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "the caller is {own} (from the socket's peer credentials) and may not act as \
                     {claimed}; leave the principal empty or name the caller"
                ),
            ))
        }
    }
}

/// `User::"name"` for a plain name, the entity uid itself when it is one of `User`, `Chat` or
/// `Service` with a quoted id free of quotes, backslashes and control characters; anything else
/// (or longer than [`MAX_PRINCIPAL_BYTES`]) is `InvalidArgument`.
pub fn canonical_principal(text: &str) -> Result<String, ServiceError> {
    let text = text.trim();
    let invalid = |reason: &str| {
        ServiceError::new(
            ErrorKind::InvalidArgument,
            format!("principal: {reason}; expected a login name or User::\"alice\""),
        )
    };
    if text.len() > MAX_PRINCIPAL_BYTES {
        return Err(invalid(&format!(
            "{} bytes, over the limit of {MAX_PRINCIPAL_BYTES}",
            text.len()
        )));
    }
    let clean_id =
        |id: &str| !id.is_empty() && !id.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    match text.split_once("::") {
        None if clean_id(text) && !text.contains(char::is_whitespace) => Ok(entity("User", text)),
        None => Err(invalid("not a plain name")),
        Some((kind @ ("User" | "Chat" | "Service"), quoted)) => match quoted
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
        {
            Some(id) if clean_id(id) => Ok(entity(kind, id)),
            _ => Err(invalid(
                "the id must be one quoted string without quotes or backslashes",
            )),
        },
        Some(_) => Err(invalid("the type must be User, Chat or Service")),
    }
}

/// The name a user principal is configured by (`alice` for `User::"alice"`, as in budgets);
/// any other principal as it is.
pub fn account_name(principal: &str) -> &str {
    principal
        .strip_prefix("User::\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(principal)
}

/// `Kind::"id"` for an id already known to need no escaping.
fn entity(kind: &str, id: &str) -> String {
    format!("{kind}::\"{id}\"")
}

/// The login name this process runs as (what daemons will call it), from the user database.
pub fn own_login() -> Option<String> {
    user_name(own_uid())
}

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// How long a uid's login name is trusted before it is looked up again: a renamed or removed
/// account is seen within this time, and a busy socket does not read the user database per call.
const NAME_LIFETIME: Duration = Duration::from_secs(60);
/// More distinct uids than this and the cache starts afresh (there are not that many accounts
/// calling one daemon; the bound keeps a uid-cycling caller from growing it).
const MAX_CACHED_NAMES: usize = 4096;

type NameCache = Mutex<HashMap<u32, (Option<String>, Instant)>>;

/// The login name of `uid` from the user database (NSS), cached for [`NAME_LIFETIME`].
fn user_name(uid: u32) -> Option<String> {
    static NAMES: OnceLock<NameCache> = OnceLock::new();
    let names = NAMES.get_or_init(NameCache::default);
    let now = Instant::now();
    {
        let cached = names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((name, at)) = cached.get(&uid)
            && now.duration_since(*at) < NAME_LIFETIME
        {
            return name.clone();
        }
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name);
    let mut cached = names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cached.len() >= MAX_CACHED_NAMES {
        cached.clear();
    }
    cached.insert(uid, (name.clone(), now));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON: u32 = 64_000;

    #[test]
    fn the_kernel_uid_decides_who_calls() {
        let root = Caller::resolve(0, Some("root"), DAEMON);
        assert_eq!(root.principal(), "User::\"root\"");
        assert!(root.is_administrator() && root.may_act_for_others());

        let router = Caller::resolve(998, Some("synos-llm-router"), DAEMON);
        assert_eq!(router.principal(), "Service::\"synos-llm-router\"");
        assert_eq!(router.standing(), Standing::Service);

        let alice = Caller::resolve(1000, Some("alice"), DAEMON);
        assert_eq!(alice.principal(), "User::\"alice\"");
        assert!(!alice.may_act_for_others());

        let developer = Caller::resolve(DAEMON, Some("dev"), DAEMON);
        assert_eq!(developer.principal(), "User::\"dev\"");
        assert_eq!(developer.standing(), Standing::SameAccount);

        // A uid the user database does not know is a user nobody can name.
        assert_eq!(
            Caller::resolve(4242, None, DAEMON).principal(),
            "User::\"#4242\""
        );
        // root named like a daemon is still root.
        assert!(Caller::resolve(0, Some("synos-memory"), DAEMON).is_administrator());
    }

    #[test]
    fn a_user_may_act_only_as_themself() {
        let alice = Caller::resolve(1000, Some("alice"), DAEMON);
        assert_eq!(alice.acting_as("").unwrap(), "User::\"alice\"");
        assert_eq!(alice.acting_as("alice").unwrap(), "User::\"alice\"");
        assert_eq!(
            alice.acting_as(" User::\"alice\" ").unwrap(),
            "User::\"alice\""
        );
        for forged in [
            "User::\"root\"",
            "bob",
            "Service::\"synos-llm-router\"",
            "Chat::\"c\"",
        ] {
            let refused = alice.acting_as(forged).unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::PermissionDenied, "{forged}");
            assert!(refused.to_string().contains("User::\"alice\""), "{refused}");
        }
    }

    #[test]
    fn services_and_root_act_for_users() {
        let router = Caller::resolve(998, Some("synos-llm-router"), DAEMON);
        assert_eq!(router.acting_as("User::\"bob\"").unwrap(), "User::\"bob\"");
        assert_eq!(
            router.acting_as("").unwrap(),
            "Service::\"synos-llm-router\""
        );
        let root = Caller::resolve(0, Some("root"), DAEMON);
        assert_eq!(root.acting_as("carol").unwrap(), "User::\"carol\"");
    }

    #[test]
    fn the_anonymous_may_not_act_at_all() {
        let anonymous = Caller::anonymous();
        assert_eq!(
            anonymous.acting_as("").unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            anonymous.acting_as("User::\"root\"").unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn hostile_principals_are_refused_before_they_go_anywhere() {
        let root = Caller::resolve(0, Some("root"), DAEMON);
        let huge = "a".repeat(MAX_PRINCIPAL_BYTES + 1);
        for hostile in [
            huge.as_str(),
            "User::\"a\"b\"",
            "User::\"a\\\"",
            "User::\"\"",
            "User::alice",
            "Admin::\"x\"",
            "bob smith",
            "User::\"line\nbreak\"",
            "\"quoted\"",
        ] {
            let refused = root.acting_as(hostile).unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::InvalidArgument, "{hostile:?}");
        }
    }

    #[test]
    fn budgets_name_users_by_login() {
        assert_eq!(account_name("User::\"alice\""), "alice");
        assert_eq!(
            account_name("Service::\"synos-doctor\""),
            "Service::\"synos-doctor\""
        );
        assert_eq!(account_name("alice"), "alice");
    }

    #[test]
    fn a_real_uid_resolves_through_the_user_database() {
        let me = Caller::from_uid(own_uid());
        assert!(me.principal().starts_with("User::\""), "{}", me.principal());
        assert!(me.may_act_for_others());
    }
}
