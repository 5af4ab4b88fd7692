//! The TOML configuration: its serde model, named defaults, and one `validate()`.
//!
//! Everything a user can get wrong is caught here, at load, with an error naming the key. This
//! module never touches the kernel or the network.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ghgate_pattern::name_matches;
use ghgate_policy::caller::{CallerKeys, CallerMatch, ConditionError};
use ipnet::IpNet;
use serde::Deserialize;

/// Where `ghgate` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ghgate/ghgate.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway keeps its own files (the interception CA, later the session store).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub redirect: RedirectConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    /// Destinations whose connections are redirected to the gateway.
    #[serde(default)]
    pub intercept: Vec<InterceptRule>,
    /// GitHub's published address ranges, mediated as a whole.
    #[serde(default)]
    pub github: GithubConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub record: RecordConfig,
    #[serde(default)]
    pub mask: ghgate_mask::MaskConfig,
    #[serde(default)]
    pub oidc: OidcConfig,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub approvals: crate::approval::config::ApprovalsConfig,
    /// The Prometheus endpoint and the event sinks.
    #[serde(default)]
    pub telemetry: crate::telemetry::config::TelemetryConfig,
    /// Egress control for everything that is not GitHub's: off, audit or block.
    #[serde(default)]
    pub egress: crate::egress::EgressConfig,
}

/// What callers may do: the policy file, and how pushes are inspected for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (`ghgate policy check FILE` validates one); reloaded when it changes.
    /// Without one, everything is allowed (and still recorded).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// How often the policy file is checked for changes.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
    /// GitHub's REST API: its host is the one whose requests are the REST API and GraphQL (and
    /// where brokered tokens go), the web host beside it (`api.github.com` → `github.com`) is
    /// where git smart HTTP gets them; it is also asked (with the push's own credential) whether
    /// a push is a fast-forward and for the trees a pushed commit changes.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// The largest pushed pack read to find the paths it changes; a larger push counts as
    /// touching every path a rule names.
    #[serde(default = "default_max_pack_bytes")]
    pub max_pack_bytes: u64,
    /// How long deciding one push (reading its pack, asking the API) may take; past it, what is
    /// still undecided counts as the riskier kind.
    #[serde(default = "default_inspect_timeout")]
    pub inspect_timeout_ms: u64,
    /// The most API calls deciding one push may make.
    #[serde(default = "default_max_api_calls")]
    pub max_api_calls: usize,
    /// The largest API request body held for an approval (its hash binds the approval).
    #[serde(default = "default_approval_body_cap")]
    pub approval_body_cap_bytes: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            file: None,
            reload_ms: default_reload_ms(),
            api_url: default_github_api(),
            max_pack_bytes: default_max_pack_bytes(),
            inspect_timeout_ms: default_inspect_timeout(),
            max_api_calls: default_max_api_calls(),
            approval_body_cap_bytes: default_approval_body_cap(),
        }
    }
}

fn default_reload_ms() -> u64 {
    1000
}
fn default_max_pack_bytes() -> u64 {
    64 << 20
}
fn default_inspect_timeout() -> u64 {
    10_000
}
fn default_max_api_calls() -> usize {
    200
}
fn default_approval_body_cap() -> usize {
    1 << 20
}

/// OIDC issuers whose ID tokens callers may present instead of a GitHub credential.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<OidcIssuer>,
}

impl OidcConfig {
    /// Each issuer is an https URL with the audiences it is accepted for. `Err((key, message))`
    /// names the offending key under `table` ("oidc", "approvals.http.oidc").
    pub fn validate(&self, table: &str) -> Result<(), (String, String)> {
        for (i, iss) in self.issuers.iter().enumerate() {
            if !iss.issuer.starts_with("https://") && !iss.issuer.starts_with("http://127.") {
                return Err((
                    format!("{table}.issuer[{i}].issuer"),
                    format!("{:?} must be an https:// URL", iss.issuer),
                ));
            }
            if iss.audiences.is_empty() {
                return Err((
                    format!("{table}.issuer[{i}].audiences"),
                    "list the audiences ghgate accepts (tokens for other audiences are refused)".into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// The `iss` claim, exactly (e.g. "https://token.actions.githubusercontent.com").
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one.
    pub audiences: Vec<String>,
    /// Where the signing keys are; default: `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// How long fetched keys are trusted before they are fetched again (an unknown `kid` also
    /// refetches, at most once per `min_refetch_secs`).
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_secs: u64,
    #[serde(default = "default_min_refetch")]
    pub min_refetch_secs: u64,
}

fn default_leeway() -> u64 {
    60
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_min_refetch() -> u64 {
    10
}

/// Which credential each caller's requests carry upstream.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// A caller no rule gives a profile: its own credential passes (recorded masked), or 403.
    #[serde(default)]
    pub default: NoProfile,
    /// Credential profiles by name.
    #[serde(default, rename = "profile")]
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// First match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<CredentialRule>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoProfile {
    #[default]
    Pass,
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// A token in a file (refused if group or others may read it).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A token in an environment variable of the gateway.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A GitHub App installation: tokens minted per request's repository.
    #[serde(default)]
    pub github_app: Option<GithubAppConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    pub app_id: u64,
    pub installation_id: u64,
    /// The app's RSA private key (PEM), refused if group or others may read it.
    pub private_key_file: PathBuf,
    /// Permissions of minted tokens (`contents = "write"`, …).
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
    /// For requests whose repository cannot be told from the URL: mint with these permissions
    /// for all the installation's repositories; absent: refuse such requests.
    #[serde(default)]
    pub fallback_permissions: Option<BTreeMap<String, String>>,
    /// The REST API the tokens are minted from.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// Mints a minute on average for the callers of one cgroup (a job, a container, a
    /// service), twice as many at once; past it, requests that need a new token get 502.
    #[serde(default = "default_mints_per_cgroup")]
    pub mints_per_minute_per_cgroup: u32,
    /// … and for every cgroup together.
    #[serde(default = "default_mints")]
    pub mints_per_minute: u32,
}

fn default_mints_per_cgroup() -> u32 {
    crate::credentials::app::MINTS_PER_CGROUP
}
fn default_mints() -> u32 {
    crate::credentials::app::MINTS_IN_ALL
}

/// An API the gateway calls with a credential: https, or plain http to loopback (tests).
fn api_url_ok(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://127.") || url.starts_with("http://[::1]")
}

fn default_github_api() -> String {
    ghgate_policy::classify::DEFAULT_API_URL.into()
}

/// Who gets a profile: every given condition must hold; lists match any of their entries;
/// strings are globs (`*` any run). The conditions are the caller matcher's
/// (`ghgate_policy::caller`), which policy rules use too: both read a caller alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRule {
    pub profile: String,
    #[serde(default)]
    pub uid: Option<Vec<u32>>,
    #[serde(default)]
    pub exe: Option<Vec<String>>,
    /// cgroup path as /proc shows it (`/system.slice/actions.runner.service/*`).
    #[serde(default)]
    pub cgroup: Option<Vec<String>>,
    /// `GITHUB_REPOSITORY` of the caller's CI job (`owner/name`, ASCII case ignored).
    #[serde(default)]
    pub ci_repository: Option<Vec<String>>,
    /// Claims of a validated OIDC token: claim name → glob (string claims; a number or a
    /// boolean as written) or member (arrays: any member matching).
    #[serde(default)]
    pub oidc: Option<BTreeMap<String, toml::Value>>,
}

impl CredentialRule {
    /// The rule's conditions; `Err` for one that could never match (an empty list, a
    /// `ci_repository` that is not owner/name, an empty `oidc` table, a claim pattern that is
    /// not a string, number or boolean).
    pub fn caller(&self) -> Result<CallerMatch, ConditionError> {
        CallerKeys {
            uid: self.uid.clone(),
            exe: self.exe.clone(),
            cgroup: self.cgroup.clone(),
            ci_repository: self.ci_repository.clone(),
            oidc: self.oidc.clone(),
            ..CallerKeys::default()
        }
        .matcher()
    }
}

/// The session recorder (`ghgate sessions …` reads what it writes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Record every intercepted exchange. Off only for benchmarks and trials.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the store lives; default `<state_dir>/record`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Bytes of each request and response body stored; beyond, only length and SHA-256.
    #[serde(default = "default_body_cap")]
    pub body_cap_bytes: u64,
    /// `interval` (fdatasync every `fsync_interval_ms`; survives kill -9 of the gateway, since
    /// every record is written before its exchange completes) or `exchange` (fdatasync before each
    /// exchange completes; also survives power loss).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// `refuse` (default): while the store cannot write, new requests get 503 naming the cause.
    /// `allow`: they pass, and what passed unrecorded is counted, logged and recorded later.
    #[serde(default)]
    pub on_record_failure: OnRecordFailure,
    /// Records queued for the disk before new requests wait (backpressure, never dropping).
    #[serde(default = "default_max_pending")]
    pub max_pending_bytes: u64,
    /// A segment is sealed and a new one begun past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Whole segments older than this are pruned at start and daily (0 keeps everything).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Copies of sealed segments and signed chain heads in S3-compatible object storage.
    #[serde(default)]
    pub sink: Option<crate::record::sink::SinkConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    #[default]
    Interval,
    Exchange,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRecordFailure {
    #[default]
    Refuse,
    Allow,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            body_cap_bytes: default_body_cap(),
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: default_fsync_interval(),
            on_record_failure: OnRecordFailure::default(),
            max_pending_bytes: default_max_pending(),
            segment_bytes: default_segment_bytes(),
            retention_days: default_retention_days(),
            sink: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_body_cap() -> u64 {
    16 << 20
}
fn default_fsync_interval() -> u64 {
    1000
}
fn default_max_pending() -> u64 {
    64 << 20
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_retention_days() -> u64 {
    90
}

impl Config {
    /// The record store's directory.
    pub fn record_dir(&self) -> PathBuf {
        self.record
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("record"))
    }
}

/// Limits on terminated client connections; each breach gets its own answer and a log line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A client must send a whole HTTP/1.1 request head within this time of the head's first
    /// byte (slowloris), or is disconnected; the quiet before a request is `idle_timeout_secs`'s.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Largest request head accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests per second on one connection (burst of the same size); more gets 429.
    #[serde(default = "default_max_rps")]
    pub max_requests_per_second: u32,
    /// Concurrent HTTP/2 streams per connection; more are refused (REFUSED_STREAM).
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// A client connection that moves no bytes either way for this long is closed gracefully
    /// (HTTP/2: GOAWAY, streams in flight finish; HTTP/1.1: after the response in flight).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Connections one process may hold through the gateway at once; more are closed at once
    /// (logged), so that one process cannot take every open file and byte the gateway has.
    #[serde(default = "default_max_connections_per_process")]
    pub max_connections_per_process: u32,
    /// Connections the processes of one cgroup may hold at once, together (a process that forks
    /// gets a process cap per child; a job's or a container's processes share their cgroup's).
    #[serde(default = "default_max_connections_per_cgroup")]
    pub max_connections_per_cgroup: u32,
    /// Connections held through the gateway at once, by every cgroup together: below what its
    /// memory allows; lowered at start to what its open files allow (two per connection).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections_per_process() -> u32 {
    4096
}

fn default_max_connections_per_cgroup() -> u32 {
    16384
}

fn default_max_connections() -> u32 {
    65536
}

fn default_idle_timeout() -> u64 {
    300
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_requests_per_second: default_max_rps(),
            max_concurrent_streams: default_max_streams(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections_per_process: default_max_connections_per_process(),
            max_connections_per_cgroup: default_max_connections_per_cgroup(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// SNI names terminated by the gateway: exact names or `*.suffix`. Any other name is relayed
    /// untouched. Also the CA's name constraints.
    #[serde(default = "default_tls_intercept")]
    pub intercept: Vec<String>,
    /// Names never terminated even if `intercept` matches (clients that pin certificates).
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// Intercepted names a passthrough destination must not serve (`tls::fronting`), besides
    /// the API's host, the exact names of `intercept` and the hosts of `[[intercept]]`.
    #[serde(default = "default_fronting_check")]
    pub fronting_check: Vec<String>,
    /// Extra PEM files of CAs trusted for upstream connections, besides the system's.
    #[serde(default)]
    pub upstream_extra_roots: Vec<PathBuf>,
    /// How many leaf certificates to keep.
    #[serde(default = "default_leaf_cache")]
    pub leaf_cache_size: usize,
    /// Destination ports whose connections are TLS: their ClientHello decides between
    /// terminating and relaying. Connections to other intercepted ports are relayed as TCP.
    #[serde(default = "default_tls_ports")]
    pub ports: Vec<u16>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            intercept: default_tls_intercept(),
            passthrough: Vec::new(),
            fronting_check: default_fronting_check(),
            upstream_extra_roots: Vec::new(),
            leaf_cache_size: default_leaf_cache(),
            ports: default_tls_ports(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// A path relative to the cgroup2 mount (created if missing), or `host` for every process.
    pub cgroup: CgroupTarget,
    /// bpffs directory where programs' links and maps are pinned, so enforcement outlives us.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default)]
    pub on_gateway_down: OnGatewayDown,
    /// The `SO_MARK` the gateway's listening sockets carry; the kernel redirects only to a
    /// listener with it (setting a mark needs CAP_NET_ADMIN, so nobody else can pose as the
    /// gateway on its port). Change it only if the host's firewall gives this mark a meaning.
    #[serde(default = "default_listener_mark")]
    pub listener_mark: u32,
    /// Container runtimes' scopes, attached to as they appear.
    #[serde(default)]
    pub containers: ContainersConfig,
}

/// `[redirect.containers]`: the Docker daemon and containerd start job and service containers in
/// scopes of their own, outside a runner's cgroup; these are watched for and attached to as they
/// appear. Whole-host mode needs none of this (and has no window before a scope is attached).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainersConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Cgroups (below the cgroup2 mount) whose child cgroups are watched.
    #[serde(default = "default_container_parents")]
    pub parents: Vec<PathBuf>,
    /// Which children are attached to: names where `*` matches any run of characters.
    #[serde(default = "default_container_names")]
    pub names: Vec<String>,
}

impl ContainersConfig {
    /// Is the cgroup at `rel` (below the cgroup2 mount) a container scope: a child of a
    /// configured parent with a configured name?
    pub fn is_scope(&self, rel: &Path) -> bool {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        self.parents.iter().any(|p| p == parent)
            && self.names.iter().any(|p| crate::redirect::scopes::glob(p, &name))
    }
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            parents: default_container_parents(),
            names: default_container_names(),
        }
    }
}

fn default_container_parents() -> Vec<PathBuf> {
    // systemd's cgroup driver puts scopes in system.slice; Docker's cgroupfs driver in docker/.
    vec!["system.slice".into(), "docker".into()]
}
fn default_container_names() -> Vec<String> {
    [
        "docker-*.scope",
        "cri-containerd-*.scope",
        "containerd-*.scope",
        "nerdctl-*.scope",
        "libpod-*.scope",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A relative path of plain components (no `..`, no root): a cgroup below the cgroup2 mount.
fn is_plain_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn default_listener_mark() -> u32 {
    gateway_common::DEFAULT_LISTENER_MARK
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupTarget {
    /// Whole-host mode: attach to the root cgroup. Only for dedicated runners.
    Host,
    /// A cgroup below the cgroup2 mount, e.g. `ghgate.clients` or `system.slice/runner.service`.
    Path(PathBuf),
}

impl<'de> Deserialize<'de> for CgroupTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(if s == "host" {
            CgroupTarget::Host
        } else {
            CgroupTarget::Path(PathBuf::from(s))
        })
    }
}

impl fmt::Display for CgroupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupTarget::Host => f.write_str("host"),
            CgroupTarget::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGatewayDown {
    /// Redirected connections are refused while no gateway listens (fail-closed).
    #[default]
    Refuse,
    /// Connections go straight to their destination while no gateway listens.
    Bypass,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Listener for IPv4 and v4-mapped destinations; must be a loopback address.
    #[serde(default = "default_listen_v4")]
    pub ipv4: SocketAddr,
    /// Listener for IPv6 destinations; must be `[::1]`.
    #[serde(default = "default_listen_v6")]
    pub ipv6: SocketAddr,
    /// Threads that accept and serve connections, each with its own listeners and upstream
    /// connections; 0 (the default) is one per CPU the gateway may use.
    #[serde(default)]
    pub shards: usize,
    /// At a stop, how long connections in flight may take to end before they are cut (new
    /// connections are refused meanwhile).
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

fn default_drain_secs() -> u64 {
    10
}

/// The longest drain a config may ask for.
const MAX_DRAIN_SECS: u64 = 600;

/// The most shards a config may ask for.
const MAX_SHARDS: usize = 256;

impl ListenConfig {
    /// How many shards serve: `shards`, or one per CPU.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => crate::listen::shards::default_count(),
            n => n,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            ipv4: default_listen_v4(),
            ipv6: default_listen_v6(),
            shards: 0,
            drain_secs: default_drain_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptRule {
    /// DNS names, resolved at start and again as their TTLs expire. No wildcards.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Address prefixes such as `140.82.112.0/20` or `::1/128`.
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Destination ports (TCP).
    pub ports: Vec<u16>,
}

/// GitHub's address space: the prefixes of the meta API's lists, beside the names of
/// `[[intercept]]`. On these addresses a TLS port is intercepted and every other port (and every
/// non-TCP socket) is refused in the kernel, unless `allow_ports` lets it through untouched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// `meta`: mediate the ranges (the default); `off`: only the names and CIDRs of `[[intercept]]`.
    #[serde(default)]
    pub ranges: RangesMode,
    /// A file in the meta API's format to start from instead of the snapshot shipped in the
    /// binary (air-gapped sites, tests).
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// Where the ranges are refreshed from, through the gateway's own verified client.
    #[serde(default = "default_meta_url")]
    pub meta_url: String,
    /// The meta API lists whose prefixes are mediated.
    #[serde(default = "default_meta_lists")]
    pub meta_lists: Vec<String>,
    /// How often the ranges are refreshed (also once at start); 0: never.
    #[serde(default = "default_meta_refresh")]
    pub refresh_secs: u64,
    /// TCP ports to GitHub's addresses let through unmediated (e.g. `[22]` for git over ssh).
    /// Every other port that is not a TLS port is refused.
    #[serde(default)]
    pub allow_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangesMode {
    #[default]
    Meta,
    Off,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            ranges: RangesMode::default(),
            snapshot: None,
            meta_url: default_meta_url(),
            meta_lists: default_meta_lists(),
            refresh_secs: default_meta_refresh(),
            allow_ports: Vec::new(),
        }
    }
}

impl GithubConfig {
    pub fn enabled(&self) -> bool {
        self.ranges == RangesMode::Meta
    }

    fn validate(&self, tls_ports: &[u16]) -> Result<(), (String, String)> {
        if !api_url_ok(&self.meta_url) {
            return Err((
                "github.meta_url".into(),
                format!("{:?} must be an https:// URL", self.meta_url),
            ));
        }
        if self.enabled() && self.meta_lists.is_empty() {
            return Err((
                "github.meta_lists".into(),
                "name one or more lists of the meta API (\"api\", \"git\", \"web\", \"copilot\")".into(),
            ));
        }
        for (i, &port) in self.allow_ports.iter().enumerate() {
            if port == 0 {
                return Err((format!("github.allow_ports[{i}]"), "ports are 1-65535".into()));
            }
            if tls_ports.contains(&port) {
                return Err((
                    format!("github.allow_ports[{i}]"),
                    format!(
                        "{port} is a TLS port ([tls] ports): it is intercepted, it cannot also pass untouched"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn default_meta_url() -> String {
    "https://api.github.com/meta".into()
}
fn default_meta_lists() -> Vec<String> {
    ["api", "git", "web", "copilot"].map(String::from).to_vec()
}
fn default_meta_refresh() -> u64 {
    6 * 3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip` or `ip:port` of the servers to ask; empty means the system's (/etc/resolv.conf).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Fixed answers (host → addresses), used instead of DNS: tests and air-gapped sites.
    #[serde(default)]
    pub overrides: BTreeMap<String, Vec<IpAddr>>,
    /// Never re-resolve sooner than this, whatever the TTL says.
    #[serde(default = "default_min_ttl")]
    pub min_ttl_secs: u64,
    /// Re-resolve at least this often.
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// After a failed lookup, try again after this long (keeping the last good answer).
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            overrides: BTreeMap::new(),
            min_ttl_secs: default_min_ttl(),
            max_ttl_secs: default_max_ttl(),
            retry_secs: default_retry(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// How long to wait for the original destination to accept.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, for log shippers (and the end-to-end tests).
    Json,
}

fn default_header_read_timeout() -> u64 {
    30
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_rps() -> u32 {
    200
}
fn default_max_streams() -> u32 {
    128
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ghgate")
}
fn default_tls_intercept() -> Vec<String> {
    [
        "github.com",
        "*.github.com",
        "*.githubusercontent.com",
        "*.githubcopilot.com",
    ]
    .map(String::from)
    .to_vec()
}
/// GitHub's hosts for the API, git, uploads and Copilot, which the default `intercept` covers
/// by wildcard only.
fn default_fronting_check() -> Vec<String> {
    [
        "api.github.com",
        "codeload.github.com",
        "uploads.github.com",
        "api.githubcopilot.com",
        "copilot-proxy.githubusercontent.com",
        "origin-tracker.githubusercontent.com",
        "raw.githubusercontent.com",
        "objects.githubusercontent.com",
    ]
    .map(String::from)
    .to_vec()
}
fn default_tls_ports() -> Vec<u16> {
    vec![443]
}
fn default_leaf_cache() -> usize {
    1024
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/ghgate")
}
fn default_listen_v4() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 15443))
}
fn default_listen_v6() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, 15443))
}
fn default_min_ttl() -> u64 {
    5
}
fn default_max_ttl() -> u64 {
    3600
}
fn default_retry() -> u64 {
    5
}
fn default_connect_timeout() -> u64 {
    10
}

impl TlsConfig {
    /// True when `name` (lower-case) is to be terminated: it matches `intercept` (exactly, or as a
    /// subdomain of a `*.suffix`) and no `passthrough` entry.
    pub fn terminates(&self, name: &str) -> bool {
        self.intercept.iter().any(|p| name_matches(p, name)) && !self.passthrough_listed(name)
    }

    /// Is `name` on the passthrough list?
    pub fn passthrough_listed(&self, name: &str) -> bool {
        self.passthrough.iter().any(|p| name_matches(p, name))
    }
}

impl Config {
    /// The intercept rules the kernel is given: the configured ones, and the self-test's
    /// loopback address (`ghgate doctor`, see [`crate::selftest`]).
    pub fn intercept_rules(&self) -> Vec<InterceptRule> {
        let mut rules = self.intercept.clone();
        rules.push(crate::selftest::rule(&self.tls.ports));
        rules
    }

    /// Where GitHub serves what (from `policy.api_url`), for the classifier and credentials.
    pub fn github_hosts(&self) -> ghgate_policy::classify::GitHub {
        ghgate_policy::classify::GitHub::from_api_url(&self.policy.api_url).unwrap_or_default()
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if let CgroupTarget::Path(p) = &self.redirect.cgroup {
            let ok = !p.as_os_str().is_empty()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok {
                return Err(invalid(
                    "redirect.cgroup".into(),
                    format!(
                        "{:?} must be a relative path below the cgroup2 mount (e.g. \"ghgate.clients\") or \"host\"",
                        p
                    ),
                ));
            }
        }
        let containers = &self.redirect.containers;
        if let Some(p) = containers.parents.iter().find(|p| !is_plain_relative(p)) {
            return Err(invalid(
                "redirect.containers.parents".into(),
                format!("{p:?} must be a relative path below the cgroup2 mount (e.g. \"system.slice\")"),
            ));
        }
        if let Some(n) = containers
            .names
            .iter()
            .find(|n| n.is_empty() || n.contains('/') || n.chars().all(|c| c == '*'))
        {
            return Err(invalid(
                "redirect.containers.names".into(),
                format!(
                    "{n:?} must be one cgroup name, `*` matching any run of characters, and not only `*`"
                ),
            ));
        }
        if containers.enabled && self.redirect.cgroup == CgroupTarget::Host {
            return Err(invalid(
                "redirect.containers.enabled".into(),
                "whole-host mode already covers every container: turn this off".into(),
            ));
        }
        if !self.redirect.pin_dir.is_absolute() {
            return Err(invalid(
                "redirect.pin_dir".into(),
                "must be an absolute path in bpffs".into(),
            ));
        }
        if self.redirect.listener_mark == 0 {
            return Err(invalid(
                "redirect.listener_mark".into(),
                "must not be 0 (every socket has mark 0)".into(),
            ));
        }
        let v4 = self.listen.ipv4;
        if !matches!(v4.ip(), IpAddr::V4(ip) if ip.is_loopback()) || v4.port() == 0 {
            return Err(invalid(
                "listen.ipv4".into(),
                format!("{v4} must be a 127.0.0.0/8 address with a non-zero port"),
            ));
        }
        if v4.ip() == IpAddr::V4(crate::selftest::ADDR) {
            return Err(invalid(
                "listen.ipv4".into(),
                format!(
                    "{} is reserved for the self-test (`ghgate doctor`)",
                    crate::selftest::ADDR
                ),
            ));
        }
        let v6 = self.listen.ipv6;
        if !matches!(v6.ip(), IpAddr::V6(ip) if ip.is_loopback()) || v6.port() == 0 {
            return Err(invalid(
                "listen.ipv6".into(),
                format!("{v6} must be [::1] with a non-zero port"),
            ));
        }
        if self.listen.drain_secs > MAX_DRAIN_SECS {
            return Err(invalid(
                "listen.drain_secs".into(),
                format!(
                    "{} s is more than {MAX_DRAIN_SECS} s; the installed service allows 30 s to stop",
                    self.listen.drain_secs
                ),
            ));
        }
        if self.listen.shards > MAX_SHARDS {
            return Err(invalid(
                "listen.shards".into(),
                format!(
                    "{} threads is more than {MAX_SHARDS}: 0 (one per CPU) is the usual choice",
                    self.listen.shards
                ),
            ));
        }
        if self.intercept.is_empty() {
            return Err(invalid(
                "intercept".into(),
                "no [[intercept]] rule: nothing would be redirected".into(),
            ));
        }
        for (i, rule) in self.intercept.iter().enumerate() {
            if rule.ports.is_empty() || rule.ports.contains(&0) {
                return Err(invalid(
                    format!("intercept[{i}].ports"),
                    "list one or more non-zero ports".into(),
                ));
            }
            if rule.hosts.is_empty() && rule.cidrs.is_empty() {
                return Err(invalid(
                    format!("intercept[{i}]"),
                    "give `hosts` or `cidrs` (or both)".into(),
                ));
            }
            for (j, host) in rule.hosts.iter().enumerate() {
                if let Err(why) = check_host_name(host) {
                    return Err(invalid(
                        format!("intercept[{i}].hosts[{j}]"),
                        format!("{host:?}: {why}"),
                    ));
                }
            }
            for (j, net) in rule.cidrs.iter().enumerate() {
                for listener in [v4, v6] {
                    if rule.ports.contains(&listener.port()) && net.contains(&listener.ip()) {
                        return Err(invalid(
                            format!("intercept[{i}].cidrs[{j}]"),
                            format!(
                                "{net} with port {} covers the gateway's own listener {listener}",
                                listener.port()
                            ),
                        ));
                    }
                }
            }
        }
        for (j, server) in self.dns.servers.iter().enumerate() {
            if let Err(why) = parse_dns_server(server) {
                return Err(invalid(format!("dns.servers[{j}]"), why));
            }
        }
        for host in self.dns.overrides.keys() {
            if let Err(why) = check_host_name(host) {
                return Err(invalid(format!("dns.overrides.{host:?}"), why));
            }
        }
        if let Err((key, message)) = self.github.validate(&self.tls.ports) {
            return Err(invalid(key, message));
        }
        if let Err((key, message)) = self.egress.validate() {
            return Err(invalid(key, message));
        }
        if self.egress.enabled() && [v4.port(), v6.port()].contains(&self.egress.dns_port) {
            return Err(invalid(
                "egress.dns_port".into(),
                format!("{} is the gateway's listen port", self.egress.dns_port),
            ));
        }
        if let Err(e) = self.mask.validate() {
            return Err(invalid(e.key, e.message));
        }
        for (name, p) in &self.credentials.profiles {
            let sources = [
                p.token_file.is_some(),
                p.token_env.is_some(),
                p.github_app.is_some(),
            ];
            if sources.iter().filter(|&&s| s).count() != 1 {
                return Err(invalid(
                    format!("credentials.profile.{name}"),
                    "give exactly one of token_file, token_env or github_app".into(),
                ));
            }
            if let Some(app) = &p.github_app {
                if !api_url_ok(&app.api_url) {
                    return Err(invalid(
                        format!("credentials.profile.{name}.github_app.api_url"),
                        format!("{:?} must be an https:// URL", app.api_url),
                    ));
                }
                for (key, n) in [
                    ("mints_per_minute_per_cgroup", app.mints_per_minute_per_cgroup),
                    ("mints_per_minute", app.mints_per_minute),
                ] {
                    if n == 0 {
                        return Err(invalid(
                            format!("credentials.profile.{name}.github_app.{key}"),
                            "must be at least 1 (0 would refuse every token)".into(),
                        ));
                    }
                }
            }
        }
        if !api_url_ok(&self.policy.api_url) {
            return Err(invalid(
                "policy.api_url".into(),
                format!("{:?} must be an https:// URL", self.policy.api_url),
            ));
        }
        if let Err(e) = ghgate_policy::classify::GitHub::from_api_url(&self.policy.api_url) {
            return Err(invalid("policy.api_url".into(), e.to_string()));
        }
        if self.policy.reload_ms == 0 {
            return Err(invalid("policy.reload_ms".into(), "must be more than 0".into()));
        }
        if let Err((key, message)) = self.approvals.validate() {
            return Err(invalid(key, message));
        }
        if let Err((key, message)) = self.telemetry.validate(self.record.enabled) {
            return Err(invalid(key, message));
        }
        for (i, rule) in self.credentials.rules.iter().enumerate() {
            if !self.credentials.profiles.contains_key(&rule.profile) {
                return Err(invalid(
                    format!("credentials.rule[{i}].profile"),
                    format!(
                        "{:?} is not a profile; the profiles are: {}",
                        rule.profile,
                        self.credentials
                            .profiles
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let Err(e) = rule.caller() {
                return Err(invalid(format!("credentials.rule[{i}]"), e.to_string()));
            }
            if rule.oidc.is_some() && self.oidc.issuers.is_empty() {
                return Err(invalid(
                    format!("credentials.rule[{i}].oidc"),
                    "matches OIDC claims, but no [[oidc.issuer]] is configured".into(),
                ));
            }
        }
        if let Err((key, message)) = self.oidc.validate("oidc") {
            return Err(invalid(key, message));
        }
        if self.dns.min_ttl_secs == 0 || self.dns.min_ttl_secs > self.dns.max_ttl_secs {
            return Err(invalid(
                "dns.min_ttl_secs".into(),
                "must be at least 1 and at most dns.max_ttl_secs".into(),
            ));
        }
        if self.dns.retry_secs == 0 {
            return Err(invalid("dns.retry_secs".into(), "must be at least 1".into()));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir".into(), "must be an absolute path".into()));
        }
        for (key, names) in [
            ("tls.intercept", &self.tls.intercept),
            ("tls.passthrough", &self.tls.passthrough),
            ("tls.fronting_check", &self.tls.fronting_check),
        ] {
            for (j, name) in names.iter().enumerate() {
                let exact_only = key == "tls.fronting_check";
                if exact_only && name.contains('*') {
                    return Err(invalid(
                        format!("{key}[{j}]"),
                        format!("{name:?}: give exact names (each is asked for by its name)"),
                    ));
                }
                if let Err(why) = check_host_name(name.strip_prefix("*.").unwrap_or(name)) {
                    return Err(invalid(
                        format!("{key}[{j}]"),
                        format!("{name:?}: {why} (use a name or *.suffix)"),
                    ));
                }
            }
        }
        let h = &self.http;
        for (key, zero) in [
            ("http.header_read_timeout_secs", h.header_read_timeout_secs == 0),
            ("http.max_requests_per_second", h.max_requests_per_second == 0),
            ("http.max_concurrent_streams", h.max_concurrent_streams == 0),
            ("http.idle_timeout_secs", h.idle_timeout_secs == 0),
            (
                "http.max_connections_per_process",
                h.max_connections_per_process == 0,
            ),
            (
                "http.max_connections_per_cgroup",
                h.max_connections_per_cgroup == 0,
            ),
            ("http.max_connections", h.max_connections == 0),
        ] {
            if zero {
                return Err(invalid(key.into(), "must be at least 1".into()));
            }
        }
        if !(1024..=1024 * 1024).contains(&h.max_header_bytes) {
            return Err(invalid(
                "http.max_header_bytes".into(),
                "must be between 1024 and 1048576".into(),
            ));
        }
        if self.tls.leaf_cache_size == 0 {
            return Err(invalid("tls.leaf_cache_size".into(), "must be at least 1".into()));
        }
        let r = &self.record;
        if r.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(invalid("record.dir".into(), "must be an absolute path".into()));
        }
        for (key, zero) in [
            ("record.fsync_interval_ms", r.fsync_interval_ms == 0),
            ("record.max_pending_bytes", r.max_pending_bytes < 1 << 20),
            ("record.segment_bytes", r.segment_bytes < 1 << 20),
        ] {
            if zero {
                return Err(invalid(
                    key.into(),
                    "is too small (at least 1 ms, or 1 MiB for sizes)".into(),
                ));
            }
        }
        if let Some(sink) = &r.sink
            && let Err((key, message)) = sink.validate()
        {
            return Err(invalid(key, message));
        }
        if self.relay.connect_timeout_secs == 0 {
            return Err(invalid(
                "relay.connect_timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Parsed DNS servers (validated at load).
    /// Where the egress resolver listens: `[listen]`'s two addresses on `[egress] dns_port`.
    pub fn egress_resolver_addrs(&self) -> Vec<SocketAddr> {
        vec![
            SocketAddr::new(self.listen.ipv4.ip(), self.egress.dns_port),
            SocketAddr::new(self.listen.ipv6.ip(), self.egress.dns_port),
        ]
    }

    pub fn dns_servers(&self) -> Vec<SocketAddr> {
        self.dns
            .servers
            .iter()
            .filter_map(|s| parse_dns_server(s).ok())
            .collect()
    }
}

fn check_host_name(host: &str) -> Result<(), String> {
    if host.contains('*') {
        return Err("wildcards cannot be resolved; list each name, or use `cidrs`".into());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err("an address belongs in `cidrs` (as a /32 or /128)".into());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("not a valid DNS name".into())
    }
}

fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an address or address:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
        [redirect]
        cgroup = "ghgate.clients"
        [[intercept]]
        hosts = ["github.com"]
        ports = [443]
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.redirect.cgroup, CgroupTarget::Path("ghgate.clients".into()));
        assert_eq!(c.redirect.on_gateway_down, OnGatewayDown::Refuse);
        assert_eq!(c.listen.ipv4, "127.0.0.1:15443".parse().unwrap());
        assert_eq!(c.redirect.pin_dir, PathBuf::from("/sys/fs/bpf/ghgate"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}\n[dns]\nserver = [\"1.1.1.1\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `server`"), "{err}");
    }

    #[test]
    fn sni_decides_termination() {
        let tls = TlsConfig {
            passthrough: vec!["pinned.github.com".into()],
            ..TlsConfig::default()
        };
        assert!(tls.terminates("github.com"));
        assert!(tls.terminates("api.github.com"));
        assert!(tls.terminates("a.b.githubusercontent.com"));
        assert!(
            !tls.terminates("githubusercontent.com"),
            "*.x does not match x itself"
        );
        assert!(!tls.terminates("evilgithub.com"));
        assert!(!tls.terminates("pinned.github.com"));
        assert!(!tls.terminates("example.com"));
    }

    #[test]
    fn host_mode_parses() {
        let c = parse(&MINIMAL.replace("\"ghgate.clients\"", "\"host\"")).unwrap();
        assert_eq!(c.redirect.cgroup, CgroupTarget::Host);
    }

    #[test]
    fn containers_are_off_by_default_and_watch_the_runtimes_scopes() {
        let c = parse(MINIMAL).unwrap();
        assert!(!c.redirect.containers.enabled);
        assert!(c.redirect.containers.names.contains(&"docker-*.scope".to_owned()));
        let scopes = &c.redirect.containers;
        assert!(scopes.is_scope(Path::new("system.slice/docker-0123.scope")));
        assert!(scopes.is_scope(Path::new("docker/cri-containerd-ab.scope")));
        // Not a child of a configured parent, not a configured name, or nested deeper.
        assert!(!scopes.is_scope(Path::new("user.slice/docker-0123.scope")));
        assert!(!scopes.is_scope(Path::new("system.slice/ssh.service")));
        assert!(!scopes.is_scope(Path::new("system.slice/docker-0123.scope/init")));
        assert!(!scopes.is_scope(Path::new("docker-0123.scope")));
        let c = parse(&format!(
            "{MINIMAL}\n[redirect.containers]\nenabled = true\nparents = [\"t/system.slice\"]\n"
        ))
        .unwrap();
        assert!(c.redirect.containers.enabled);
        assert_eq!(
            c.redirect.containers.parents,
            vec![PathBuf::from("t/system.slice")]
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (MINIMAL.replace("ghgate.clients", "../etc"), "redirect.cgroup"),
            (
                MINIMAL.replace("github.com", "*.github.com"),
                "intercept[0].hosts[0]",
            ),
            (MINIMAL.replace("[443]", "[]"), "intercept[0].ports"),
            (
                format!("{MINIMAL}\n[listen]\nipv4 = \"10.0.0.1:15443\"\n"),
                "listen.ipv4",
            ),
            (format!("{MINIMAL}\n[listen]\nshards = 100000\n"), "listen.shards"),
            (
                format!("{MINIMAL}\n[listen]\ndrain_secs = 86400\n"),
                "listen.drain_secs",
            ),
            (
                format!("{MINIMAL}\n[dns]\nservers = [\"nope\"]\n"),
                "dns.servers[0]",
            ),
            (
                format!("{MINIMAL}\n[tls]\nintercept = [\"*.*.com\"]\n"),
                "tls.intercept[0]",
            ),
            (format!("state_dir = \"rel\"\n{MINIMAL}"), "state_dir"),
            (
                format!("{MINIMAL}\n[redirect.containers]\nparents = [\"/sys/fs/cgroup\"]\n"),
                "redirect.containers.parents",
            ),
            (
                format!("{MINIMAL}\n[redirect.containers]\nnames = [\"*\"]\n"),
                "redirect.containers.names",
            ),
            (
                format!(
                    "{}\n[redirect.containers]\nenabled = true\n",
                    MINIMAL.replace("\"ghgate.clients\"", "\"host\"")
                ),
                "redirect.containers.enabled",
            ),
            (
                format!("{MINIMAL}\n[[intercept]]\ncidrs = [\"127.0.0.0/8\"]\nports = [15443]\n"),
                "intercept[1].cidrs[0]",
            ),
            (
                format!("{MINIMAL}\n[approvals]\nmax_pending = 0\n"),
                "approvals.max_pending",
            ),
            (
                format!("{MINIMAL}\n[approvals]\nmax_pending_per_uid = 0\n"),
                "approvals.max_pending_per_uid",
            ),
            (
                format!("{MINIMAL}\n[tls]\nfronting_check = [\"*.github.com\"]\n"),
                "tls.fronting_check[0]",
            ),
            (
                format!(
                    "{MINIMAL}\n[credentials.profile.ci]\ngithub_app = {{ app_id = 1, installation_id = 2, \
                     private_key_file = \"/k.pem\", mints_per_minute = 0 }}\n"
                ),
                "credentials.profile.ci.github_app.mints_per_minute",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "expected {key} in: {err}");
        }
    }

    #[test]
    fn bad_cidr_is_a_parse_error_naming_the_field() {
        let err = parse(&format!(
            "{MINIMAL}\n[[intercept]]\ncidrs = [\"1.2.3.0/40\"]\nports = [443]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("cidrs"), "{err}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for sub in [dir.clone(), dir.join("examples")] {
            for entry in std::fs::read_dir(&sub).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    // Example policy files sit beside the gateway configs.
                    let text = std::fs::read_to_string(&path).unwrap();
                    if toml::from_str::<toml::Table>(&text)
                        .unwrap()
                        .contains_key("redirect")
                    {
                        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    } else {
                        crate::policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 2, "no example configs found in {}", dir.display());
    }
}
