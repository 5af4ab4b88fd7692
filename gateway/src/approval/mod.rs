//! Pending approvals for risky operations: when a policy rule says `require_approval`, the
//! operation (a ref update, an API call) waits here, bound to its exact content and to the
//! requester's identity, until members of the rule's approver group decide it. The retried
//! operation then passes once (approved) or is refused (denied).
//!
//! This module must never let a requester decide its own operation (under any uid: the kernel's
//! login uid and session tell the person behind a `sudo -u`), count one approver twice,
//! pass an operation other than the exact one approved, or pass it more than once — not even
//! across a restart: a pass is on disk before it is answered.
pub mod config;
pub mod control;
pub mod notify;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use crate::{identity::Login, record::model::SessionId};

pub use notify::{Poster, Webhook};

/// Microseconds since the Unix epoch.
pub type Micros = u64;

/// Finished approvals (used, denied, expired) are kept this long for `list --all`, then dropped.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Pending approvals one requester (its bound identity) may have at once: a process asking for
/// approval of a new operation with every request would otherwise post every one of them to
/// the approvers and grow the approvals file without bound. Past it, new operations are
/// refused (429) until some are decided or expire.
pub const MAX_PENDING_PER_REQUESTER: usize = 16;
/// Pending approvals of one uid: a requester can vary its executable's path, which is part of
/// its bound identity, but not its uid, so one user cannot fill the gateway's total for others.
pub const MAX_PENDING_PER_UID: usize = 64;
/// Pending approvals in all.
pub const MAX_PENDING: usize = 1024;

/// How many approvals may be pending at once (`[approvals] max_pending_per_requester`,
/// `max_pending_per_uid`, `max_pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCaps {
    pub per_requester: usize,
    pub per_uid: usize,
    pub total: usize,
}

impl Default for PendingCaps {
    fn default() -> Self {
        Self {
            per_requester: MAX_PENDING_PER_REQUESTER,
            per_uid: MAX_PENDING_PER_UID,
            total: MAX_PENDING,
        }
    }
}

/// Whose pending approvals reached their cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The requester's (its bound identity).
    Requester,
    /// Its uid's.
    Uid,
    /// Everyone's.
    All,
}

/// The file, in the approvals directory, that holds every approval.
pub const STATE_FILE: &str = "approvals.json";

pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// "2026-11-21T10:00:00Z" (UTC, whole seconds).
pub fn rfc3339(at: Micros) -> String {
    time::OffsetDateTime::from_unix_timestamp((at / 1_000_000) as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}", at / 1_000_000))
}

/// Who asked. The identity an approval is bound to is `uid`, the login uid, `exe`,
/// `oidc_subject` and `ci_repository`; `session` (one process run) and the login session are
/// recorded but not bound, since a retry is usually a new process, maybe from a new login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub uid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub session: SessionId,
    pub oidc_subject: Option<String>,
    pub ci_repository: Option<String>,
    /// The requesting process's login uid and login session (approvals older than this field
    /// read as unset).
    #[serde(default)]
    pub login: Login,
}

impl Requester {
    /// Same bound identity: may this requester use an approval `other` asked for?
    fn binds(&self, other: &Requester) -> bool {
        self.uid == other.uid
            && self.login.uid == other.login.uid
            && self.exe == other.exe
            && self.oidc_subject == other.oidc_subject
            && self.ci_repository == other.ci_repository
    }

    /// Is `approver` this requester (by uid, or by user name)?
    fn is(&self, approver: &Approver) -> bool {
        approver.uid == Some(self.uid) || self.user.as_deref() == Some(approver.name.as_str())
    }

    /// Why `approver`, under another uid, is still the person who asked: the same login uid
    /// (or, where a side has none, the same uid behind it), or the same login session; or, for
    /// a requester that is root with no login, an approver with no login either (any process
    /// root starts may take any uid, and has no login unless it writes one). `None` for
    /// An approver over HTTPS has no process to read: it is the requester when its name or
    /// Unix user is the user the requester logged in as (`sudo` to root keeps that login), or
    /// its OIDC subject is the one the requester presented.
    fn same_person(&self, approver: &Approver) -> Option<String> {
        let Some(uid) = approver.uid else {
            if let (Some(o), Some(sub)) = (&approver.oidc, &self.oidc_subject)
                && o.subject == *sub
            {
                return Some(format!(
                    "its OIDC subject {sub} is the one the requester presented"
                ));
            }
            let login_user = self.login.uid.and_then(crate::identity::user_name);
            let theirs = [Some(&approver.name), approver.unix_user.as_ref()];
            return theirs.into_iter().flatten().find_map(|n| {
                if self.user.as_ref() == Some(n) {
                    Some(format!("its user {n} is the requester's"))
                } else if login_user.as_ref() == Some(n) {
                    Some(format!(
                        "its user {n} is the one the requester logged in as (login uid {})",
                        self.login.uid.unwrap_or_default()
                    ))
                } else {
                    None
                }
            });
        };
        if self.uid == 0 && self.login.uid.is_none() && approver.login.uid.is_none() {
            return Some(
                "it has no login uid, and the requester is root with none: any child of root's \
                 under another uid looks just like it"
                    .into(),
            );
        }
        let (theirs, mine) = (approver.login.person(uid), self.login.person(self.uid));
        if theirs == mine {
            return Some(match (approver.login.uid, self.login.uid) {
                (Some(_), Some(_)) => format!("its login uid {theirs} is the requester's"),
                (Some(_), None) => format!("its login uid {theirs} is the requester's uid"),
                (None, _) => format!("its uid {theirs} is the requester's login uid"),
            });
        }
        match (approver.login.session, self.login.session) {
            (Some(a), Some(b)) if a == b => Some(format!("it runs in the requester's login session {a}")),
            _ => None,
        }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{u} (uid {})", self.uid)?,
            None => write!(f, "uid {}", self.uid)?,
        }
        if let Some(exe) = &self.exe {
            write!(f, " {exe}")?;
        }
        if let Some(repo) = &self.ci_repository {
            write!(f, " ci:{repo}")?;
        }
        if let Some(sub) = &self.oidc_subject {
            write!(f, " oidc:{sub}")?;
        }
        if self.login != Login::default() {
            write!(f, " ({})", self.login)?;
        }
        Ok(())
    }
}

/// Exactly what is approved: nothing else passes on the strength of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    /// A ref update from `old` to `new` (object ids; all zeros for create/delete).
    GitRef {
        repository: String,
        ref_name: String,
        old: String,
        new: String,
    },
    /// One API request, its body fixed by its SHA-256 (hex).
    Api {
        host: String,
        method: String,
        path: String,
        body_sha256: String,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn short(id: &str) -> &str {
            &id[..id.len().min(12)]
        }
        match self {
            Operation::GitRef {
                repository,
                ref_name,
                old,
                new,
            } => write!(f, "push {repository} {ref_name} {}..{}", short(old), short(new)),
            Operation::Api {
                host,
                method,
                path,
                body_sha256,
            } => write!(
                f,
                "{method} https://{host}{path} (body sha256 {})",
                short(body_sha256)
            ),
        }
    }
}

/// What the policy rule asks for (group, approvals needed, expiry, hold).
pub use crate::policy::ApprovalSpec;

/// A group's current members, by user name or uid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverGroup {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub uids: Vec<u32>,
}

impl ApproverGroup {
    pub fn contains(&self, who: &Approver) -> bool {
        self.users.contains(&who.name) || who.uid.is_some_and(|uid| self.uids.contains(&uid))
    }
}

/// Where approver groups are looked up, each time someone decides or lists: a membership change
/// applies at once, also to approvals already pending.
pub trait ApproverGroups: Send + Sync {
    /// A group's members; `None` when no group has this name.
    fn group(&self, name: &str) -> Option<ApproverGroup>;
    /// Every group, for who may list approvals (members of any group may).
    fn all(&self) -> Vec<(String, ApproverGroup)>;
}

impl ApproverGroups for BTreeMap<String, ApproverGroup> {
    fn group(&self, name: &str) -> Option<ApproverGroup> {
        self.get(name).cloned()
    }
    fn all(&self) -> Vec<(String, ApproverGroup)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Groups that change while the gateway runs (a config reload replaces the map).
impl ApproverGroups for RwLock<BTreeMap<String, ApproverGroup>> {
    fn group(&self, name: &str) -> Option<ApproverGroup> {
        self.read().unwrap_or_else(|e| e.into_inner()).group(name)
    }
    fn all(&self) -> Vec<(String, ApproverGroup)> {
        self.read().unwrap_or_else(|e| e.into_inner()).all()
    }
}

/// Who decides, as the control API authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub name: String,
    /// The peer's uid on the Unix socket; `None` over HTTP (tokens name users, not uids).
    pub uid: Option<u32>,
    /// The socket peer's login uid and session, read from the kernel; unset over HTTP.
    pub login: Login,
    /// The OIDC ID token that authenticated this approver over HTTP, if one did.
    pub oidc: Option<OidcIdentity>,
    /// The Unix user behind an approver known over HTTPS, where the control API is told it (a
    /// token's `user`, the claim `[approvals.http.oidc] user_claim` names); compared with the
    /// requester's user and login user as its name is.
    pub unix_user: Option<String>,
    /// "socket" or "http".
    pub via: &'static str,
}

/// An approver known by an OIDC ID token: its issuer and subject, as the verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
}

impl Approver {
    /// An approver on the control socket: the peer's uid and login, from the kernel.
    pub fn socket(uid: u32, login: Login) -> Self {
        Approver {
            name: crate::identity::user_name(uid).unwrap_or_else(|| format!("uid:{uid}")),
            uid: Some(uid),
            login,
            oidc: None,
            unix_user: None,
            via: "socket",
        }
    }

    /// An approver over HTTPS, named by a configured token (`oidc: None`) or an OIDC token.
    pub fn http(name: String, oidc: Option<OidcIdentity>) -> Self {
        Approver {
            name,
            uid: None,
            login: Login::default(),
            oidc,
            unix_user: None,
            via: "http",
        }
    }

    /// The Unix user behind an approver over HTTPS (see `unix_user`).
    pub fn with_unix_user(mut self, user: Option<String>) -> Self {
        self.unix_user = user.filter(|u| !u.trim().is_empty());
        self
    }

    /// Root with no other person's login behind it (uid 0 logged in as root, or no login at
    /// all: a service, a cron job): nobody in particular, refused on the socket unless
    /// `[approvals] allow_root_socket`.
    pub fn is_anonymous_root(&self) -> bool {
        self.uid == Some(0) && self.login.uid.is_none_or(|l| l == 0)
    }

    /// How this approver was authenticated, for the record: "uid 65534, login uid 1000,
    /// session 3, via socket" or "oidc https://idp.example subject 42, via http".
    pub fn identity(&self) -> String {
        let mut out = String::new();
        if let Some(uid) = self.uid {
            out += &format!("uid {uid}, {}, ", self.login);
        }
        if let Some(o) = &self.oidc {
            out += &format!("oidc {} subject {}, ", o.issuer, o.subject);
        }
        if let Some(u) = &self.unix_user {
            out += &format!("unix user {u}, ");
        }
        out + "via " + self.via
    }
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.identity())
    }
}

/// One approver's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    #[serde(default)]
    pub uid: Option<u32>,
    pub via: String,
    pub reason: Option<String>,
    pub at: Micros,
    /// The approver's login uid and session (socket approvers).
    #[serde(default)]
    pub login: Login,
    /// How the approver was authenticated ([`Approver::identity`]).
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers approved; the next identical operation passes (once).
    Approved,
    Denied {
        by: String,
        reason: Option<String>,
    },
    /// The approved operation passed.
    Used {
        at: Micros,
    },
    /// Not decided (or, once approved, not retried) in time.
    Expired,
}

impl State {
    /// Nothing more can happen to it.
    pub fn is_done(&self) -> bool {
        matches!(self, State::Denied { .. } | State::Used { .. } | State::Expired)
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied { .. } => "denied",
            State::Used { .. } => "used",
            State::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// "apr-" and 10 base32 characters from the OS's randomness (50 bits).
    pub id: String,
    pub operation: Operation,
    pub requester: Requester,
    /// The policy rule that asked for approval.
    pub rule: String,
    pub group: String,
    pub needed: u32,
    /// Approvals so far, by distinct approvers.
    pub approvals: Vec<Decision>,
    pub state: State,
    pub created_at: Micros,
    /// Deadline for a decision; once approved, for the retry.
    pub expires_at: Micros,
    /// When the state last changed (finished approvals are dropped [`KEEP_FINISHED`] after).
    pub updated_at: Micros,
    /// The rule's message to approvers.
    pub message: Option<String>,
}

impl Approval {
    /// The command that approves it, for notifications.
    pub fn approve_command(&self) -> String {
        format!("ghgate approvals approve {}", self.id)
    }
}

/// A step in an approval's life, for the session store and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Requested,
    /// The webhook's outcome.
    Notified {
        ok: bool,
        attempts: u32,
        error: Option<String>,
    },
    /// One approver approved; the approval's state says whether that was the last one needed.
    /// `identity` says how the approver was authenticated ([`Approver::identity`]).
    Approved {
        by: String,
        identity: String,
        reason: Option<String>,
    },
    Denied {
        by: String,
        identity: String,
        reason: Option<String>,
    },
    /// The approved operation passed.
    Used,
    Expired,
}

/// The answer to an operation that needs approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Approved, and consumed by this call: let it pass, now and only now.
    Approved { id: String },
    /// Waiting for a decision; `new` when this call created it.
    Pending {
        id: String,
        expires_at: Micros,
        new: bool,
    },
    /// Denied; a retry after `expires_at` of the denied approval asks anew.
    Denied {
        id: String,
        by: String,
        reason: Option<String>,
    },
    /// Not asked for: the requester, its uid, or everyone (`whose`) has `pending` approvals
    /// waiting, the most allowed ([`PendingCaps`]).
    TooMany { pending: usize, whose: Whose },
}

impl Gate {
    /// Why an operation was not asked for, for the requester.
    pub fn too_many_text(pending: usize, whose: Whose) -> String {
        let of = match whose {
            Whose::Requester => "approvals you asked for are pending, the most one requester may have",
            Whose::Uid => "approvals of your uid are pending, the most one uid may have",
            Whose::All => "approvals are pending on this gateway, the most it holds",
        };
        format!("not asked for approval: {pending} {of}; wait for some to be decided or to expire")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval {id} (`ghgate approvals list --all` lists them)")]
    Unknown { id: String },
    #[error("approval {id} is {state}, not pending: there is nothing left to decide")]
    NotPending { id: String, state: &'static str },
    #[error(
        "approval {id} is decided by approver group {group:?}, which is not configured: add it to the policy"
    )]
    NoGroup { id: String, group: String },
    #[error("{approver} is not in approver group {group:?}, which decides approval {id}")]
    NotInGroup {
        id: String,
        approver: String,
        group: String,
    },
    #[error(
        "{approver} requested approval {id} and cannot decide it: another member of group {group:?} must"
    )]
    SelfDecision {
        id: String,
        approver: String,
        group: String,
    },
    #[error(
        "{approver} cannot decide approval {id}: {why}, and another uid (sudo, su, setpriv) or \
         another way in (the HTTPS control API) is still the same person; another member of group \
         {group:?} must"
    )]
    SamePerson {
        id: String,
        approver: String,
        why: String,
        group: String,
    },
    #[error(
        "{approver} cannot decide approval {id} through the control socket: root with no login of \
         another user is nobody in particular. Run `ghgate approvals` as yourself (sudo keeps your \
         login uid), or set `[approvals] allow_root_socket = true`"
    )]
    RootSocket { id: String, approver: String },
    #[error("{approver} already approved {id}; it needs {missing} more approver(s) of group {group:?}")]
    AlreadyApproved {
        id: String,
        approver: String,
        group: String,
        missing: u32,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {}: {reason}; move it aside to start with no approvals", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

pub type StepHook = Arc<dyn Fn(&Approval, &Step) + Send + Sync>;

/// Every approval, persisted in `<dir>/approvals.json`. Thread-safe; share it as `Arc`.
pub struct Approvals {
    path: PathBuf,
    list: Mutex<Vec<Approval>>,
    groups: Arc<dyn ApproverGroups>,
    on_step: StepHook,
    /// Bumped on every change, for [`Approvals::wait`].
    changed: watch::Sender<u64>,
    webhook: Mutex<Option<Arc<Webhook>>>,
    caps: Mutex<PendingCaps>,
    me: Weak<Approvals>,
}

impl fmt::Debug for Approvals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Approvals")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Approvals {
    /// Loads `<dir>/approvals.json` (`dir` is created at the first write): pending and approved
    /// approvals survive a restart. `on_step` is called after each step, outside any lock.
    pub fn open(
        dir: &Path,
        groups: Arc<dyn ApproverGroups>,
        on_step: StepHook,
    ) -> Result<Arc<Self>, ApprovalError> {
        let path = dir.join(STATE_FILE);
        let list = store::load(&path)?;
        Ok(Arc::new_cyclic(|me| Approvals {
            path,
            list: Mutex::new(list),
            groups,
            on_step,
            changed: watch::Sender::new(0),
            webhook: Mutex::new(None),
            caps: Mutex::new(PendingCaps::default()),
            me: me.clone(),
        }))
    }

    /// From now on, each new pending approval is posted to this webhook, in the background.
    /// `None` stops notifying.
    pub fn set_webhook(&self, webhook: Option<Webhook>) {
        *self.webhook.lock().unwrap_or_else(|e| e.into_inner()) = webhook.map(Arc::new);
    }

    /// From now on, new approvals are refused past these caps (approvals already pending stay).
    pub fn set_pending_caps(&self, caps: PendingCaps) {
        *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = caps;
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Approval>> {
        // A poisoned lock is used as is: no code holding it can panic halfway through a change.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires what is due, applies `change` (told how many expired) to the list, then writes
    /// it to disk; if `change` or the write fails, the list is restored and nothing happened.
    /// The steps are emitted after the lock is released.
    fn transact<T>(
        &self,
        change: impl FnOnce(
            &mut Vec<Approval>,
            Micros,
            usize,
        ) -> Result<(T, Vec<(Approval, Step)>), ApprovalError>,
    ) -> Result<T, ApprovalError> {
        let now = now_micros();
        let (value, steps) = {
            let mut list = self.lock();
            let before = list.clone();
            let mut steps = expire(&mut list, now);
            let result = change(&mut list, now, steps.len());
            let result = result.and_then(|(value, more)| {
                steps.extend(more);
                if list.as_slice() != before.as_slice() {
                    store::save(&self.path, &list)?;
                }
                Ok(value)
            });
            match result {
                Ok(value) => (value, steps),
                Err(e) => {
                    *list = before;
                    return Err(e);
                }
            }
        };
        if !steps.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        for (approval, step) in &steps {
            (self.on_step)(approval, step);
        }
        Ok(value)
    }

    /// The gate for an operation a rule requires approval for. An approved approval of this
    /// exact operation, asked for by the same identity (uid, exe, OIDC subject, CI repository)
    /// under the same rule and group, is consumed (it passes exactly once); a pending one is
    /// reused; a denial stands until the denied approval's expiry; otherwise a new pending
    /// approval is created (and the webhook notified in the background).
    ///
    /// `Err` only when the approvals file cannot be written: the operation must then be refused.
    pub fn check(
        &self,
        op: &Operation,
        requester: &Requester,
        spec: &ApprovalSpec,
        rule: &str,
        message: Option<&str>,
    ) -> Result<Gate, ApprovalError> {
        let needed = spec.approvals.max(1);
        let caps = *self.caps.lock().unwrap_or_else(|e| e.into_inner());
        let (gate, created) = self.transact(|list, now, _| {
            let found = list.iter_mut().rev().find(|a| {
                a.operation == *op
                    && a.requester.binds(requester)
                    && a.rule == rule
                    && a.group == spec.group
                    && a.needed == needed
                    && match a.state {
                        State::Pending | State::Approved => true,
                        State::Denied { .. } => now < a.expires_at,
                        State::Used { .. } | State::Expired => false,
                    }
            });
            if let Some(a) = found {
                let gate = match &a.state {
                    State::Approved => {
                        a.state = State::Used { at: now };
                        a.updated_at = now;
                        let gate = Gate::Approved { id: a.id.clone() };
                        return Ok(((gate, None), vec![(a.clone(), Step::Used)]));
                    }
                    State::Pending => Gate::Pending {
                        id: a.id.clone(),
                        expires_at: a.expires_at,
                        new: false,
                    },
                    State::Denied { by, reason } => Gate::Denied {
                        id: a.id.clone(),
                        by: by.clone(),
                        reason: reason.clone(),
                    },
                    State::Used { .. } | State::Expired => unreachable!("filtered above"),
                };
                return Ok(((gate, None), Vec::new()));
            }
            let pending = list
                .iter()
                .filter(|a| a.state == State::Pending && now < a.expires_at);
            let mine = pending.clone().filter(|a| a.requester.binds(requester)).count();
            let uid = pending
                .clone()
                .filter(|a| a.requester.uid == requester.uid)
                .count();
            let all = pending.count();
            let full = [
                (mine, caps.per_requester, Whose::Requester),
                (uid, caps.per_uid, Whose::Uid),
                (all, caps.total, Whose::All),
            ]
            .into_iter()
            .find(|(n, max, _)| n >= max);
            if let Some((pending, _, whose)) = full {
                return Ok(((Gate::TooMany { pending, whose }, None), Vec::new()));
            }
            let approval = Approval {
                id: new_id(),
                operation: op.clone(),
                requester: requester.clone(),
                rule: rule.to_owned(),
                group: spec.group.clone(),
                needed,
                approvals: Vec::new(),
                state: State::Pending,
                created_at: now,
                expires_at: now.saturating_add(spec.expires.as_micros() as u64),
                updated_at: now,
                message: message.map(str::to_owned),
            };
            list.push(approval.clone());
            let gate = Gate::Pending {
                id: approval.id.clone(),
                expires_at: approval.expires_at,
                new: true,
            };
            Ok(((gate, Some(approval.clone())), vec![(approval, Step::Requested)]))
        })?;
        if let Some(approval) = created {
            self.notify(approval);
        }
        Ok(gate)
    }

    /// Posts a new approval to the webhook, if any, in a background task.
    fn notify(&self, approval: Approval) {
        let Some(webhook) = self.webhook.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let me = self.me.clone();
        let step = |ok, error: &str| Step::Notified {
            ok,
            attempts: 0,
            error: Some(error.to_owned()),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let step = webhook.deliver(&approval).await;
                    if let Some(me) = me.upgrade() {
                        let current = me.get(&approval.id).unwrap_or(approval);
                        (me.on_step)(&current, &step);
                    }
                });
            }
            Err(_) => (self.on_step)(
                &approval,
                &step(false, "no async runtime to post the webhook from"),
            ),
        }
    }

    /// Resolves with the approval's state once it is no longer pending (approved, denied,
    /// expired), or `None` after `timeout` or for an unknown id. An approved operation passes
    /// only through [`Approvals::check`], which consumes it.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<State> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let approval = self.get(id)?;
            let due = approval.expires_at <= now_micros();
            match approval.state {
                State::Pending if due => return Some(State::Expired),
                State::Pending => {}
                state => return Some(state),
            }
            // Woken by any change; the expiry task marks it expired at its deadline.
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// One approver approves. Once `needed` distinct approvers have, the approval is approved
    /// and its deadline becomes now + the rule's `expires`, for the requester's retry.
    pub fn approve(
        &self,
        id: &str,
        approver: &Approver,
        reason: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        self.decide(id, approver, reason, true)
    }

    /// One approver denies: the approval is denied at once.
    pub fn deny(
        &self,
        id: &str,
        approver: &Approver,
        reason: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        self.decide(id, approver, reason, false)
    }

    fn decide(
        &self,
        id: &str,
        approver: &Approver,
        reason: Option<String>,
        approve: bool,
    ) -> Result<Approval, ApprovalError> {
        let groups = &self.groups;
        self.transact(|list, now, _| {
            let a = list
                .iter_mut()
                .find(|a| a.id == id)
                .ok_or_else(|| ApprovalError::Unknown { id: id.to_owned() })?;
            if a.state != State::Pending {
                return Err(ApprovalError::NotPending {
                    id: a.id.clone(),
                    state: a.state.name(),
                });
            }
            let group = groups.group(&a.group).ok_or_else(|| ApprovalError::NoGroup {
                id: a.id.clone(),
                group: a.group.clone(),
            })?;
            if !group.contains(approver) {
                return Err(ApprovalError::NotInGroup {
                    id: a.id.clone(),
                    approver: approver.to_string(),
                    group: a.group.clone(),
                });
            }
            if a.requester.is(approver) {
                return Err(ApprovalError::SelfDecision {
                    id: a.id.clone(),
                    approver: approver.to_string(),
                    group: a.group.clone(),
                });
            }
            if let Some(why) = a.requester.same_person(approver) {
                return Err(ApprovalError::SamePerson {
                    id: a.id.clone(),
                    approver: approver.to_string(),
                    why,
                    group: a.group.clone(),
                });
            }
            let identity = approver.identity();
            let step = if approve {
                let twice = a.approvals.iter().any(|d| {
                    d.by == approver.name
                        || (d.uid.is_some() && d.uid == approver.uid)
                        || (d.login.uid.is_some() && d.login.uid == approver.login.uid)
                });
                if twice {
                    return Err(ApprovalError::AlreadyApproved {
                        id: a.id.clone(),
                        approver: approver.to_string(),
                        group: a.group.clone(),
                        missing: a.needed.saturating_sub(a.approvals.len() as u32),
                    });
                }
                a.approvals.push(Decision {
                    by: approver.name.clone(),
                    uid: approver.uid,
                    via: approver.via.to_owned(),
                    reason: reason.clone(),
                    at: now,
                    login: approver.login,
                    identity: Some(identity.clone()),
                });
                if a.approvals.len() as u32 >= a.needed {
                    a.state = State::Approved;
                    a.expires_at = now.saturating_add(a.expires_at.saturating_sub(a.created_at));
                }
                Step::Approved {
                    by: approver.name.clone(),
                    identity,
                    reason,
                }
            } else {
                a.state = State::Denied {
                    by: approver.name.clone(),
                    reason: reason.clone(),
                };
                Step::Denied {
                    by: approver.name.clone(),
                    identity,
                    reason,
                }
            };
            a.updated_at = now;
            Ok((a.clone(), vec![(a.clone(), step)]))
        })
    }

    /// Approvals, oldest first: pending and approved ones, or all kept ones.
    pub fn list(&self, include_done: bool) -> Vec<Approval> {
        self.lock()
            .iter()
            .filter(|a| include_done || !a.state.is_done())
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Approval> {
        self.lock().iter().find(|a| a.id == id).cloned()
    }

    /// Expires pending and approved approvals past their deadline (emitting `Step::Expired`)
    /// and drops finished ones older than [`KEEP_FINISHED`]. Returns how many expired.
    pub fn expire_due(&self) -> Result<usize, ApprovalError> {
        self.transact(|list, now, expired| {
            let keep = KEEP_FINISHED.as_micros() as u64;
            list.retain(|a| !(a.state.is_done() && a.updated_at.saturating_add(keep) < now));
            Ok((expired, Vec::new()))
        })
    }

    /// Whether `who` may see every approval: uid 0 and members of any approver group. Others
    /// see only the approvals they requested.
    pub fn may_see_all(&self, who: &Approver) -> bool {
        who.uid == Some(0) || self.groups.all().iter().any(|(_, g)| g.contains(who))
    }

    /// Whether `who` requested this approval (by uid, or by user name).
    pub fn requested_by(approval: &Approval, who: &Approver) -> bool {
        approval.requester.is(who)
    }

    /// Runs [`Approvals::expire_due`] every `every` until the handle is aborted.
    pub fn spawn_expiry(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                if let Err(e) = me.expire_due() {
                    tracing::warn!(error = %e, "cannot expire due approvals");
                }
            }
        })
    }
}

/// Marks pending and approved approvals past their deadline as expired.
fn expire(list: &mut [Approval], now: Micros) -> Vec<(Approval, Step)> {
    let mut steps = Vec::new();
    for a in list.iter_mut() {
        if matches!(a.state, State::Pending | State::Approved) && a.expires_at <= now {
            a.state = State::Expired;
            a.updated_at = now;
            steps.push((a.clone(), Step::Expired));
        }
    }
    steps
}

/// "apr-" and 10 characters of RFC 4648 base32 (lower case) from the OS's randomness.
fn new_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let mut bits = u64::from_le_bytes(bytes);
    let mut id = String::from("apr-");
    for _ in 0..10 {
        id.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    id
}
