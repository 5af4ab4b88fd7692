//! What the recorder stores: one typed record per fact, in the order the gateway saw them.
//!
//! Records are the unit of the store (framed, checksummed, hash-chained; see `store`). Sessions,
//! exchanges and streams are rebuilt from them by reading in order. Nothing here may ever hold a
//! credential in clear: headers pass through `mask_headers` before they become a record, and
//! bodies are recorded after the masking stage.
use base64::Engine as _;
/// The git types records hold are the git crate's own (their JSON is what these records always
/// had: ids as lower-case hex, `op` as "create", "update" or "delete", a decided ref's `kind` as
/// "create", "delete", "fast-forward", "non-fast-forward" or "update").
pub use ghgate_git::{Oid, RefKind, RefOp, RefUpdate};
use ghgate_mask::{Finding, Masker};
use serde::{Deserialize, Serialize};

pub use crate::id::{ExchangeId, SessionId};
use crate::words::words;

/// Milliseconds since the Unix epoch are too coarse for token-by-token replay: times are
/// microseconds since the epoch.
pub type Micros = u64;

pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Microseconds since the epoch as RFC 3339 (UTC), for logs and state files.
pub fn rfc3339(micros: Micros) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// One record. Serialized as JSON inside a store frame; `type` names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    SessionStart(SessionStart),
    SessionEnd(SessionEnd),
    Connection(Connection),
    /// A request about to be forwarded: written (and acknowledged) before anything is sent
    /// upstream, so nothing is forwarded that the store does not hold.
    Request(RequestStart),
    Exchange(Exchange),
    /// Part of a request or response body, in order, up to the configured cap.
    BodyChunk(BodyChunk),
    /// One SSE event or WebSocket message, timestamped as it passed.
    StreamEvent(StreamEvent),
    /// A git smart-HTTP operation seen in an exchange's bodies.
    Git(GitOp),
    /// A secret the masking stage found (and replaced) in an exchange.
    Masked(Masked),
    /// Who the gateway took the caller of an exchange to be, and which credential went upstream.
    Identity(Identity),
    /// What the policy decided for an exchange (or one ref of a push), and the rule that decided.
    Decision(Decision),
    /// One step in the life of an approval: requested, notified, approved, denied, used, expired.
    Approval(ApprovalStep),
    /// A connection about to be relayed as raw bytes (its name is on the passthrough list):
    /// written and acknowledged before the upstream is dialled.
    PassthroughStart(PassthroughStart),
    /// A connection relayed as raw bytes (not terminated): only its facts and byte counts.
    Passthrough(Passthrough),
    /// A connection or datagram refused because it would have gone around the gateway.
    Refusal(Refusal),
    /// A connection or datagram egress control saw and let through (to somewhere not GitHub's).
    Egress(EgressSeen),
    /// A span in which the gateway did not mediate as configured.
    EnforcementGap(EnforcementGap),
    /// Written by the store itself at start when the previous run left a torn tail.
    Recovery(Recovery),
    /// Written by the store when whole segments were pruned by retention.
    Tombstone(Tombstone),
    /// Exchanges the gateway let through while the store could not write (`on_record_failure = "allow"`).
    Unrecorded(Unrecorded),
    /// A secret found in what a push carried, with the ref that carried it and what came of it.
    PushSecret(PushSecret),
}

impl Record {
    /// The session a record belongs to, when it belongs to one.
    pub fn session(&self) -> Option<&SessionId> {
        match self {
            Record::SessionStart(r) => Some(&r.session),
            Record::SessionEnd(r) => Some(&r.session),
            Record::Connection(r) => Some(&r.session),
            Record::Request(r) => Some(&r.session),
            Record::Exchange(r) => Some(&r.session),
            Record::BodyChunk(r) => Some(&r.session),
            Record::StreamEvent(r) => Some(&r.session),
            Record::Git(r) => Some(&r.session),
            Record::Masked(r) => Some(&r.session),
            Record::Identity(r) => Some(&r.session),
            Record::Decision(r) => Some(&r.session),
            Record::Approval(r) => Some(&r.session),
            Record::PassthroughStart(r) => Some(&r.session),
            Record::Passthrough(r) => Some(&r.session),
            Record::Refusal(r) => Some(&r.session),
            Record::Egress(r) => Some(&r.session),
            Record::PushSecret(r) => Some(&r.session),
            Record::Recovery(_)
            | Record::Tombstone(_)
            | Record::Unrecorded(_)
            | Record::EnforcementGap(_) => None,
        }
    }

    /// The exchange a record belongs to, when it belongs to one.
    pub fn exchange(&self) -> Option<ExchangeId> {
        match self {
            Record::Request(r) => Some(r.exchange),
            Record::Exchange(r) => Some(r.exchange),
            Record::BodyChunk(r) => Some(r.exchange),
            Record::StreamEvent(r) => Some(r.exchange),
            Record::Git(r) => Some(r.exchange),
            Record::Masked(r) => Some(r.exchange),
            Record::Identity(r) => Some(r.exchange),
            Record::Decision(r) => Some(r.exchange),
            Record::Approval(r) => r.exchange,
            Record::PushSecret(r) => Some(r.exchange),
            _ => None,
        }
    }

    /// When the fact happened, in microseconds since the epoch.
    pub fn at(&self) -> Micros {
        match self {
            Record::SessionStart(r) => r.at,
            Record::SessionEnd(r) => r.at,
            Record::Connection(r) => r.at,
            Record::Request(r) => r.at,
            Record::Exchange(r) => r.started_at,
            Record::BodyChunk(r) => r.at,
            Record::StreamEvent(r) => r.at,
            Record::Git(r) => r.at,
            Record::Masked(r) => r.at,
            Record::Identity(r) => r.at,
            Record::Decision(r) => r.at,
            Record::Approval(r) => r.at,
            Record::PassthroughStart(r) => r.at,
            Record::Passthrough(r) => r.at,
            Record::Refusal(r) => r.at,
            Record::Egress(r) => r.at,
            Record::EnforcementGap(r) => r.at,
            Record::Recovery(r) => r.at,
            Record::PushSecret(r) => r.at,
            Record::Tombstone(r) => r.at,
            Record::Unrecorded(r) => r.at,
        }
    }
}

/// The first record of a session: one run of one client process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    /// Stable id: derived from the boot id, the tgid and the process start time.
    pub session: SessionId,
    pub at: Micros,
    pub tgid: u32,
    pub uid: u32,
    /// From the password database when the uid has an entry.
    pub user: Option<String>,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Command line, arguments masked.
    pub cmdline: Vec<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// CI job facts, added by the identity stage (empty outside CI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ci: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub session: SessionId,
    pub at: Micros,
    pub reason: SessionEndReason,
}

words! {
    /// Why a session ended.
    pub enum SessionEndReason {
        /// The process was seen to exit (its pidfd became readable).
        Exited = "exited",
    }
}

/// One terminated client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub session: SessionId,
    pub conn: u64,
    pub at: Micros,
    pub client: String,
    pub orig_dst: String,
    pub sni: String,
    /// ALPN on the client side and toward the upstream ("h2", "http/1.1").
    pub client_alpn: String,
    pub upstream_alpn: Option<String>,
    pub client_tls: Option<String>,
    pub upstream_tls: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestStart {
    pub session: SessionId,
    pub conn: u64,
    pub exchange: ExchangeId,
    pub at: Micros,
    pub method: String,
    pub url: String,
}

/// One request/response exchange, written when it has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub session: SessionId,
    pub conn: u64,
    pub exchange: ExchangeId,
    pub started_at: Micros,
    pub method: String,
    pub url: String,
    /// HTTP version the client spoke ("HTTP/1.1", "HTTP/2").
    pub http_version: String,
    pub status: u16,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub request_body: BodySummary,
    pub response_body: BodySummary,
    /// Microseconds from start to the response head, and to the end of the response body.
    pub ttfb_us: u64,
    pub duration_us: u64,
    pub answered_by: AnsweredBy,
    pub error: Option<String>,
}

words! {
    /// Who answered an exchange.
    pub enum AnsweredBy {
        Upstream = "upstream",
        /// The gateway answered itself (a refusal, a held request, a 421, a 503 while the store
        /// cannot write).
        Gateway = "gateway",
    }
}

/// A whole body's facts, whether or not all of it was stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BodySummary {
    /// Length of the whole body as it passed (after masking).
    pub len: u64,
    /// SHA-256 of the whole body as it passed, lowercase hex.
    pub sha256: String,
    /// How many of its first bytes are stored in `BodyChunk` records.
    pub stored: u64,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to upstream.
    Request,
    /// Upstream to client.
    Response,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BodyChunk {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub dir: Direction,
    pub at: Micros,
    /// Offset of this chunk in the body.
    pub offset: u64,
    /// Base64 (standard alphabet) of the bytes.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Sse,
    WebSocket,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub kind: StreamKind,
    pub dir: Direction,
    pub at: Micros,
    /// Position of this event in its exchange's stream, from 0.
    pub index: u64,
    /// SSE: the event's `event:` field; WebSocket: "text", "binary", "ping", "pong" or "close".
    pub name: Option<String>,
    /// SSE: the joined `data:` lines; WebSocket text: the text; binary: base64.
    pub data: String,
    /// Length of the whole message when `data` holds only its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<u64>,
}

/// One secret found in an exchange: which rule, its fingerprint (the same secret has the same
/// fingerprint everywhere this gateway saw it), and where. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Masked {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub at: Micros,
    pub rule: String,
    pub fingerprint: String,
    pub place: Place,
    /// Whether the client received it masked (`false`: `responses = "alert"` or `"off"`, or a
    /// request the client sent).
    pub client_masked: bool,
}

words! {
    /// Where a masked secret was.
    pub enum Place {
        RequestBody = "request body",
        ResponseBody = "response body",
        RequestHeader = "request headers",
        ResponseHeader = "response headers",
        Url = "url",
        WebSocket = "websocket messages",
        /// Inside the objects of a pushed pack (inflated to be scanned; the pack is not stored).
        GitPushPack = "git push pack",
    }
}

/// The identity stage's view of one exchange: the OIDC identity the caller proved (if any) and
/// what credential the request carried upstream. Never a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub at: Micros,
    /// `iss` and `sub` of a validated OIDC token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_subject: Option<String>,
    /// The token's other claims (repository, workflow, groups, …), as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_claims: Option<String>,
    /// The credential profile whose token went upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub credential: CredentialKind,
    /// Why the request was refused, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

words! {
    /// What credential a request carried upstream.
    pub enum CredentialKind {
        /// The profile's token.
        Brokered = "brokered",
        /// The caller's own.
        Passed = "passed",
        /// A caller with a profile, where no token belongs: its own removed, nothing sent.
        Stripped = "stripped",
        /// The caller sent none, and none was added.
        None = "none",
        /// The request was refused before anything went upstream (`Identity::refused` says why).
        Refused = "refused",
    }
}

/// The policy's decision for an exchange, or for one ref update of a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub at: Micros,
    pub action: DecisionAction,
    /// The rule that decided (`rule #2 "force-push-main"`, or `the default`).
    pub rule: String,
    /// What the caller was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The ref update decided, for a push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_update: Option<DecidedRef>,
    /// The approval this decision waits on or used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    pub outcome: DecisionOutcome,
}

words! {
    /// The action of the rule that decided (as a policy file names it).
    pub enum DecisionAction {
        Allow = "allow",
        Deny = "deny",
        RequireApproval = "require_approval",
        RecordOnly = "record_only",
    }
}

words! {
    /// What came of a decision.
    pub enum DecisionOutcome {
        /// The request (or ref update) went on.
        Passed = "passed",
        Refused = "refused",
        /// Waiting for an approver.
        Held = "held",
        /// Allowed by its own rule, refused because another ref of the same atomic push was.
        RefusedAtomicPush = "refused (atomic push)",
    }
}

/// A push's ref update as the policy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecidedRef {
    pub name: String,
    pub old: Oid,
    pub new: Oid,
    pub kind: RefKind,
    /// How the kind was decided ("the pushed commits", "the compare API", or why it could not
    /// be and the riskier kind was assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_from: Option<String>,
    /// Paths the push changes, when a rule needed them (at most a few hundred are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Why the paths could not be told (then every path rule counted as matching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths_unknown: Option<String>,
}

/// A secret the policy stage found in what a push carried (a file of a pushed commit), before
/// anything went upstream: one record per secret and place. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushSecret {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub at: Micros,
    /// The masking rule that found it.
    pub rule: String,
    /// Its keyed fingerprint: the same secret has the same fingerprint in every record.
    pub fingerprint: String,
    /// `owner/name`, when the push's URL names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The ref whose update carried it.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The commit that brings it, and the file, when the gateway could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Oid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether the gateway had seen this fingerprint in a response before the push.
    pub seen_in_response: bool,
    /// What came of the ref update (refused, held, passed).
    pub outcome: DecisionOutcome,
    /// The policy rule that decided the ref update.
    pub rule_decided: String,
}

/// One step of an approval, recorded in the session that asked for it (or used it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalStep {
    pub session: SessionId,
    pub at: Micros,
    /// The approval's id (`apr-…`).
    pub id: String,
    pub step: ApprovalStepKind,
    /// The exchange that asked for it or used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeId>,
    /// The operation, on one line ("push refs/heads/main 1a2b3c4 → 5d6e7f8 to o/r").
    pub operation: String,
    pub rule: String,
    /// Who approved or denied, and how ("alice via socket").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

words! {
    /// A step in the life of an approval.
    pub enum ApprovalStepKind {
        Requested = "requested",
        /// The webhook was delivered (`reason` says after how many attempts).
        Notified = "notified",
        /// The webhook could not be delivered (`reason` says why).
        NotifyFailed = "notify_failed",
        Approved = "approved",
        Denied = "denied",
        /// An approved operation went through, using the approval up.
        Used = "used",
        Expired = "expired",
    }
}

/// A git smart-HTTP operation, parsed from the streaming bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitOp {
    pub session: SessionId,
    pub exchange: ExchangeId,
    pub at: Micros,
    pub service: GitService,
    /// Push: the ref updates the client asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<RefUpdate>,
    /// Push: size and SHA-256 of the pack the client sent.
    pub pack_len: Option<u64>,
    pub pack_sha256: Option<String>,
    /// Fetch: object ids the client wanted, with the ref names the server advertised for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wants: Vec<Want>,
}

words! {
    /// The git smart-HTTP service of an operation, as git names it on the wire.
    pub enum GitService {
        /// A push.
        ReceivePack = "git-receive-pack",
        /// A fetch or clone.
        UploadPack = "git-upload-pack",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub oid: Oid,
    /// Ref names advertised for this id in the same session, if any were seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passthrough {
    pub session: SessionId,
    pub at: Micros,
    pub client: String,
    pub orig_dst: String,
    /// The SNI the client sent, when it sent one.
    pub sni: Option<String>,
    /// Why it was not terminated.
    pub reason: PassthroughReason,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassthroughStart {
    pub session: SessionId,
    pub at: Micros,
    pub client: String,
    pub orig_dst: String,
    pub sni: Option<String>,
    /// Why it is not terminated.
    pub reason: PassthroughReason,
}

words! {
    /// Why a connection is relayed as raw bytes instead of terminated.
    pub enum PassthroughReason {
        /// Its TLS name is on the passthrough list.
        PassthroughList = "passthrough list",
        /// It was redirected to a port the gateway does not speak TLS on.
        NotATlsPort = "not a TLS port",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub at: Micros,
    /// The segment whose tail was torn.
    pub segment: u64,
    /// Bytes of the segment kept, and bytes cut off.
    pub kept: u64,
    pub truncated: u64,
    /// Whole records kept in that segment.
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub at: Micros,
    /// First and last pruned segment numbers.
    pub first_segment: u64,
    pub last_segment: u64,
    /// Sequence number and hash (hex) of the last pruned record, where the chain continues.
    pub last_seq: u64,
    pub last_hash: String,
    /// Why: "older than 90d", etc.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unrecorded {
    pub at: Micros,
    /// How many exchanges passed unrecorded since the store failed, and why it failed.
    pub exchanges: u64,
    pub cause: String,
}

words! {
    /// Which layer refused a connection.
    pub enum RefusalLayer {
        /// The cgroup programs: the caller's connect() or sendmsg() failed.
        Kernel = "kernel",
        /// The gateway, after accepting a redirected connection (at the TLS peek).
        Gateway = "gateway",
    }
}

words! {
    /// Why a connection was refused.
    pub enum RefusalReason {
        /// A TCP port to GitHub's addresses that is neither intercepted nor allowed (ssh on 22, …).
        PortNotAllowed = "port_not_allowed",
        /// UDP, SCTP or another non-TCP socket to GitHub's addresses.
        NotTcp = "not_tcp",
        /// Something other than the gateway held the gateway's listening port.
        ForeignListener = "foreign_listener",
        /// The kernel could not remember the connection, so it refused it rather than let it pass.
        MapError = "map_error",
        /// No gateway was listening (fail-closed): the connection was refused.
        GatewayDown = "gateway_down",
        /// A TLS name that is neither intercepted nor on the passthrough list.
        ForeignSni = "foreign_sni",
        /// A ClientHello without a server name.
        NoSni = "no_sni",
        /// A ClientHello the gateway could not parse.
        MalformedHello = "malformed_hello",
        /// A ClientHello offering Encrypted Client Hello: its real name is hidden from the gateway.
        Ech = "ech",
        /// Bytes that are not TLS on a TLS port (ssh, plain HTTP, …).
        NotTls = "not_tls",
        /// A passthrough relay that could not be recorded before it began.
        StoreUnavailable = "store_unavailable",
        /// A passthrough name sent to an address the gateway does not resolve it to.
        PassthroughElsewhere = "passthrough_elsewhere",
        /// A passthrough name sent to an address that also serves an intercepted name (domain
        /// fronting: the relay could carry that name's requests unseen).
        PassthroughFronts = "passthrough_fronts",
        /// A packet to GitHub's addresses that no socket hook saw (a raw socket's hand-built
        /// datagram, a connection older than the programs), dropped at egress.
        EgressDropped = "egress_dropped",
        /// Egress control in block mode: the destination is not on the allow-list.
        NotAllowed = "not_allowed",
        /// Egress control in block mode: a raw or ICMP socket, which could reach any address
        /// without a connect() or sendmsg() the kernel checks.
        RawSocket = "raw_socket",
    }
}

words! {
    /// The transport of a refused connection or datagram: its protocol, or what the kernel said
    /// of a socket no name covers ("type 3 protocol 1").
    pub enum Transport {
        Tcp = "tcp",
        Udp = "udp",
        Mptcp = "mptcp",
        Sctp = "sctp",
    } else Other
}

/// A connection (or datagram) that never reached its destination because it would have gone
/// around the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub session: SessionId,
    pub at: Micros,
    pub layer: RefusalLayer,
    pub reason: RefusalReason,
    /// Where the caller was going, as it wrote it.
    pub orig_dst: String,
    pub transport: Transport,
    /// The caller's end, for connections the gateway accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Identical refusals (same caller, destination and reason, within a second) this record
    /// stands for.
    pub count: u64,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
}

/// A connection (or the first datagrams to one destination within a second) that egress control
/// let through: audit mode records every one, block mode the allowed ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressSeen {
    pub session: SessionId,
    pub at: Micros,
    /// Where the caller was going, as it wrote it (a v4-mapped address as the IPv4 one).
    pub orig_dst: String,
    pub transport: Transport,
    /// The name the destination was looked up by through the gateway's resolver, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Identical events (same caller, destination and transport) this record stands for.
    pub count: u64,
    pub tgid: u32,
    pub uid: u32,
    pub comm: String,
}

words! {
    /// What kind of enforcement was lost.
    pub enum GapKind {
        /// The gateway stopped without an orderly stop (crash, kill -9); the programs stayed
        /// attached, so connections were refused (or bypassed, in bypass mode) meanwhile.
        GatewayDown = "gateway_down",
        /// The gateway stopped in an orderly way; the programs stayed attached meanwhile.
        GatewayStopped = "gateway_stopped",
        /// The programs or their pins were removed: nothing was mediated until they came back.
        Detached = "detached",
        /// The host rebooted: the programs came back with the gateway (units order the gateway
        /// before the runner, so nothing governed ran in between).
        Reboot = "reboot",
        /// The record sink fell further behind than `max_backlog_bytes` and, with
        /// `on_sink_failure = "allow"`, traffic went on while records were not leaving the host.
        SinkBehind = "sink_behind",
    }
}

/// A span in which the gateway did not mediate as configured, written when it is noticed (at
/// the next start, or by the watcher while running).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnforcementGap {
    /// When the gap was noticed.
    pub at: Micros,
    pub kind: GapKind,
    /// The last moment enforcement was known to be in force, and when it was in force again.
    pub since: Micros,
    pub until: Micros,
    pub detail: String,
    /// Connections the kernel refused, and let through (bypass mode), during the gap, when the
    /// programs stayed attached to count them.
    #[serde(default)]
    pub refused: u64,
    #[serde(default)]
    pub bypassed: u64,
}

/// Header names whose values are credentials: always masked in records.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-github-token",
    "x-api-key",
    "api-key",
    "openai-api-key",
    "x-hub-signature",
    "x-hub-signature-256",
];

/// Headers as they may be stored: credential values replaced by `[MASKED:credential:<fp>]`,
/// keeping the auth scheme ("Bearer", "token", "Basic") so an auditor can still see what kind of
/// credential was used; every other value passes through `masker`. For basic auth the
/// fingerprint is the password's, so a token sent as a git password has the fingerprint it has
/// anywhere else. Returns what `masker` found besides.
pub fn mask_headers(headers: &http::HeaderMap, masker: &Masker) -> (Vec<(String, String)>, Vec<Finding>) {
    let mut found = Vec::new();
    let masked = headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().to_owned();
            let value = if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                let raw = value.as_bytes();
                let (scheme, secret) = match raw.iter().position(|&b| b == b' ') {
                    Some(i) if (1..=16).contains(&i) => (Some(&raw[..i]), raw[i + 1..].trim_ascii()),
                    _ => (None, raw.trim_ascii()),
                };
                let basic_password = scheme
                    .filter(|s| s.eq_ignore_ascii_case(b"basic"))
                    .and_then(|_| base64::engine::general_purpose::STANDARD.decode(secret).ok())
                    .and_then(|d| d.iter().position(|&b| b == b':').map(|c| d[c + 1..].to_vec()));
                let fp = masker.fingerprint(basic_password.as_deref().unwrap_or(secret));
                match scheme {
                    Some(s) => format!("{} [MASKED:credential:{fp}]", String::from_utf8_lossy(s)),
                    None => format!("[MASKED:credential:{fp}]"),
                }
            } else {
                let (text, f) = masker.mask_str(&String::from_utf8_lossy(value.as_bytes()));
                found.extend(f);
                text
            };
            (name, value)
        })
        .collect();
    (masked, found)
}

/// Token prefixes that mark a command-line argument as carrying a credential. The masking stage
/// recognises far more; this keeps the obvious ones out of session records meanwhile.
const TOKEN_PREFIXES: &[&str] = &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];

/// A process's command line as it may be stored: credential headers, tokens and URL passwords
/// replaced by `[MASKED]`.
pub fn mask_cmdline(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            let lower = arg.to_ascii_lowercase();
            if let Some((name, _)) = arg.split_once(':')
                && CREDENTIAL_HEADERS.contains(&name.trim().to_ascii_lowercase().as_str())
            {
                return format!("{name}: [MASKED]");
            }
            if TOKEN_PREFIXES.iter().any(|p| lower.contains(p)) {
                return mask_tokens(arg);
            }
            mask_url_password(arg)
        })
        .collect()
}

fn mask_tokens(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some((at, prefix)) = TOKEN_PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, *p)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        let token_end = rest[at + prefix.len()..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |e| at + prefix.len() + e);
        out.push_str("[MASKED]");
        rest = &rest[token_end..];
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@host…` → `scheme://user:[MASKED]@host…`.
fn mask_url_password(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_owned();
    };
    let auth_start = scheme_end + 3;
    let authority_end = arg[auth_start..].find('/').map_or(arg.len(), |e| auth_start + e);
    match arg[auth_start..authority_end].rfind('@') {
        Some(at) => match arg[auth_start..auth_start + at].find(':') {
            Some(colon) => format!(
                "{}[MASKED]{}",
                &arg[..auth_start + colon + 1],
                &arg[auth_start + at..]
            ),
            None => arg.to_owned(),
        },
        None => arg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_lose_their_credentials() {
        let args: Vec<String> = [
            "curl",
            "-H",
            "Authorization: Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "--token=ghs_0123456789abcdef0123456789abcdef0123",
            "https://bob:hunter2@github.com/o/r.git",
            "https://github.com/o/r.git",
        ]
        .map(String::from)
        .to_vec();
        let masked = mask_cmdline(&args);
        assert_eq!(
            masked,
            [
                "curl",
                "-H",
                "Authorization: [MASKED]",
                "--token=[MASKED]",
                "https://bob:[MASKED]@github.com/o/r.git",
                "https://github.com/o/r.git"
            ]
        );
    }

    #[test]
    fn credential_headers_keep_the_scheme_only() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789".parse().unwrap(),
        );
        h.insert("cookie", "session=abc".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        let masker = ghgate_mask::Masker::new(ghgate_mask::Rules::builtin(), [3; 32]);
        let (m, _) = mask_headers(&h, &masker);
        let get = |n: &str| m.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let fp = masker.fingerprint(b"ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(
            get("authorization"),
            Some(format!("Bearer [MASKED:credential:{fp}]").as_str())
        );
        assert_eq!(
            get("cookie"),
            Some(format!("[MASKED:credential:{}]", masker.fingerprint(b"session=abc")).as_str())
        );
        assert_eq!(get("accept"), Some("application/json"));
        assert!(!format!("{m:?}").contains("ghp_"));
        // A token sent as a git password has the fingerprint it has anywhere else.
        let mut h = http::HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD
            .encode("x-access-token:ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        h.insert("authorization", format!("Basic {basic}").parse().unwrap());
        let (m, _) = mask_headers(&h, &masker);
        assert_eq!(m[0].1, format!("Basic [MASKED:credential:{fp}]"));
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = Record::Git(GitOp {
            session: "s1".into(),
            exchange: ExchangeId::new(7),
            at: 1,
            service: GitService::ReceivePack,
            updates: vec![RefUpdate::new(
                Oid::zero(ghgate_git::ObjectFormat::Sha1),
                "a".repeat(40).parse().unwrap(),
                "refs/heads/main",
            )],
            pack_len: Some(10),
            pack_sha256: Some("00".into()),
            wants: vec![],
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"type\":\"git\""), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }

    /// Records as the code before the git crate wrote them (ids as `String`s, a record-only
    /// `RefOp`), printed by that code: they read back as the same values and write back to the
    /// same bytes, so old stores still read (and `sessions verify`).
    const WRITTEN_BEFORE_THE_GIT_CRATE: [&str; 3] = [
        r#"{"type":"git","session":"s1","exchange":7,"at":1700000000000001,"service":"git-receive-pack","updates":[{"old":"0000000000000000000000000000000000000000","new":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","name":"refs/heads/main","op":"create"},{"old":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","new":"b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2","name":"refs/heads/dev","op":"update"},{"old":"c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3","new":"0000000000000000000000000000000000000000","name":"refs/tags/v1","op":"delete"},{"old":"0000000000000000000000000000000000000000000000000000000000000000","new":"d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4","name":"refs/heads/sha256","op":"create"}],"pack_len":1234,"pack_sha256":"e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5"}"#,
        r#"{"type":"git","session":"s1","exchange":8,"at":1700000000000002,"service":"git-upload-pack","pack_len":null,"pack_sha256":null,"wants":[{"oid":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","refs":["HEAD","refs/heads/main"]},{"oid":"f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6"}]}"#,
        r#"{"type":"decision","session":"s1","exchange":7,"at":1700000000000003,"action":"require_approval","rule":"rule #2 \"force\"","message":"ask","ref_update":{"name":"refs/heads/main","old":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1","new":"b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2","kind":"non-fast-forward","kind_from":"the pushed commits and the compare API","paths":[".github/workflows/ci.yml"]},"approval":"ap-1","outcome":"held"}"#,
    ];

    #[test]
    fn git_records_of_old_stores_read_back_byte_for_byte() {
        for json in WRITTEN_BEFORE_THE_GIT_CRATE {
            let record: Record = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), json);
        }
        let Record::Git(push) = serde_json::from_str(WRITTEN_BEFORE_THE_GIT_CRATE[0]).unwrap() else {
            panic!("a git record");
        };
        let ops: Vec<RefOp> = push.updates.iter().map(RefUpdate::op).collect();
        assert_eq!(ops, [RefOp::Create, RefOp::Update, RefOp::Delete, RefOp::Create]);
        assert_eq!(push.updates[3].new.format(), ghgate_git::ObjectFormat::Sha256);
        // A stored id that is not one is refused, not read as something else.
        let bad = WRITTEN_BEFORE_THE_GIT_CRATE[1].replace("f6f6f6f6", "not-hex!");
        assert!(serde_json::from_str::<Record>(&bad).is_err());
    }

    /// The words each typed field holds are the strings the code before the types wrote (every
    /// value it could write, from its writers at the time): a store holding them reads, and a
    /// record written back holds them again.
    #[test]
    fn typed_fields_hold_the_words_earlier_versions_wrote() {
        fn words<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
            all: &[T],
        ) -> Vec<String> {
            all.iter()
                .map(|v| {
                    let json = serde_json::to_string(v).unwrap();
                    assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v, "{json} reads back");
                    serde_json::from_str::<String>(&json).unwrap()
                })
                .collect()
        }
        use AnsweredBy as A;
        assert_eq!(words(&[A::Upstream, A::Gateway]), ["upstream", "gateway"]);
        use CredentialKind as C;
        assert_eq!(
            words(&[C::Brokered, C::Passed, C::Stripped, C::None, C::Refused]),
            ["brokered", "passed", "stripped", "none", "refused"]
        );
        use DecisionAction as D;
        assert_eq!(
            words(&[D::Allow, D::Deny, D::RequireApproval, D::RecordOnly]),
            ["allow", "deny", "require_approval", "record_only"]
        );
        use DecisionOutcome as O;
        assert_eq!(
            words(&[O::Passed, O::Refused, O::Held, O::RefusedAtomicPush]),
            ["passed", "refused", "held", "refused (atomic push)"]
        );
        use ApprovalStepKind as S;
        assert_eq!(
            words(&[
                S::Requested,
                S::Notified,
                S::NotifyFailed,
                S::Approved,
                S::Denied,
                S::Used,
                S::Expired
            ]),
            [
                "requested",
                "notified",
                "notify_failed",
                "approved",
                "denied",
                "used",
                "expired"
            ]
        );
        assert_eq!(words(&[SessionEndReason::Exited]), ["exited"]);
        use PassthroughReason as P;
        assert_eq!(
            words(&[P::PassthroughList, P::NotATlsPort]),
            ["passthrough list", "not a TLS port"]
        );
        assert_eq!(
            words(&[GitService::ReceivePack, GitService::UploadPack]),
            ["git-receive-pack", "git-upload-pack"]
        );
        use Place as M;
        assert_eq!(
            words(&[
                M::RequestBody,
                M::ResponseBody,
                M::RequestHeader,
                M::ResponseHeader,
                M::Url,
                M::WebSocket,
                M::GitPushPack
            ]),
            [
                "request body",
                "response body",
                "request headers",
                "response headers",
                "url",
                "websocket messages",
                "git push pack"
            ]
        );
        use RefKind as K;
        assert_eq!(
            words(&[K::Create, K::Delete, K::FastForward, K::NonFastForward, K::Update]),
            ["create", "delete", "fast-forward", "non-fast-forward", "update"]
        );
        use Transport as T;
        assert_eq!(
            words(&[
                T::Tcp,
                T::Udp,
                T::Mptcp,
                T::Sctp,
                T::Other("type 3 protocol 1".into())
            ]),
            ["tcp", "udp", "mptcp", "sctp", "type 3 protocol 1"]
        );
        assert_eq!(
            words(&[RefusalLayer::Kernel, RefusalLayer::Gateway]),
            ["kernel", "gateway"]
        );
        use GapKind as G;
        assert_eq!(
            words(&[G::GatewayDown, G::GatewayStopped, G::Detached, G::Reboot]),
            ["gateway_down", "gateway_stopped", "detached", "reboot"]
        );
        assert_eq!(RefusalReason::WORDS.len(), 16);
        for w in RefusalReason::WORDS {
            assert_eq!(words(&[RefusalReason::from_word(w).unwrap()]), [*w]);
        }
    }

    /// A word no variant names is refused by a closed field (the record does not read, rather
    /// than read as something it is not) and kept as written by an open one.
    #[test]
    fn unknown_words_are_refused_or_kept() {
        let e = serde_json::from_str::<DecisionOutcome>(r#""maybe""#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
        assert!(e.to_string().contains("`refused (atomic push)`"), "{e}");
        let t: Transport = serde_json::from_str(r#""type 5 protocol 0""#).unwrap();
        assert_eq!(t, Transport::Other("type 5 protocol 0".into()));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#""type 5 protocol 0""#);
        // A known word given as `Other` is that word all the same.
        let tcp = Transport::from_word("tcp");
        assert_eq!(tcp, Transport::Tcp);
    }
}
