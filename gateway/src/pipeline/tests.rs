//! The pipeline's order, stage by stage, without a gateway: who is calling and what goes
//! upstream for them is decided before the policy, a refusal stops the exchange before anything
//! else runs, and the credential is put in only as the request leaves.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use ::http::{HeaderValue, header};
use ghgate_mask::{FingerprintKey, MaskConfig, policy::MaskSet};
use ghgate_policy::classify::GitHub;

use super::{Pipeline, identity::Credential};
use crate::{
    approval::testutil,
    config::{CredentialsConfig, DnsConfig, PolicyConfig},
    credentials::Broker,
    enforce::Enforcer,
    http::{Exchange, Phases as _, testing},
    outbound::Outbound,
    policy::live::Live,
    resolve::Resolver,
    tls::upstream::UpstreamTls,
};

const BROKERED: &str = "ghp_BrokeredByTheGatewayN0tTheCallers0123";
const CALLERS: &str = "ghp_TheCallersOwnTokenWhichMustNotGoUp0123";

fn outbound() -> Outbound {
    Outbound::new(
        UpstreamTls::new(&[]).unwrap(),
        Arc::new(Resolver::new(&DnsConfig::default(), &[]).unwrap()),
        Duration::from_secs(2),
    )
}

/// A pipeline whose broker gives this process's uid a profile with a static token, under a
/// policy that refuses API deletes; no recorder.
fn pipeline(dir: &Path) -> Pipeline {
    let token = dir.join("token");
    std::fs::write(&token, BROKERED).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let creds: CredentialsConfig = toml::from_str(&format!(
        "default = \"refuse\"\n[profile.ci]\ntoken_file = {:?}\n[[rule]]\nprofile = \"ci\"\nuid = [{}]\n",
        token.display().to_string(),
        nix::unistd::getuid().as_raw()
    ))
    .unwrap();
    let broker = Broker::load(&creds, &outbound()).unwrap();
    let policy = ghgate_policy::Policy::parse(
        "default = \"allow\"\n[[rule]]\nname = \"no-deletes\"\naction = \"deny\"\nmethod = \"DELETE\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let (approvals, _, _) = testutil::open(dir, &[], &[]);
    let enforcer = Enforcer::new(
        Live::fixed(policy),
        approvals,
        outbound(),
        PolicyConfig::default(),
    );
    let mask = MaskSet::new(&MaskConfig::default(), FingerprintKey::new([7; 32])).unwrap();
    Pipeline::new(
        None,
        mask,
        Arc::new(broker),
        None,
        Some(Arc::new(enforcer)),
        Arc::new(GitHub::default()),
    )
}

fn with_callers_token(method: &str, host: &str, path: &str) -> (Exchange, ::http::request::Parts) {
    let auth = format!("token {CALLERS}");
    let ex = testing::exchange(method, host, path, &[("authorization", &auth)]);
    let mut req = ::http::Request::builder().method(method).uri(path);
    req = req.header(header::AUTHORIZATION, auth);
    (ex, req.body(()).unwrap().into_parts().0)
}

#[tokio::test]
async fn the_brokered_token_replaces_the_callers_only_as_the_request_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path());
    let (ex, mut req) = with_callers_token("GET", "api.github.com", "/repos/o/r");
    let mut head = p.begin(&ex);
    assert!(
        p.request_filter(&ex, &mut head, &req).await.is_none(),
        "it passes"
    );
    assert!(matches!(head.credential, Some(Credential::Inject(..))));
    // Nothing was put in before the request leaves (a later stage could still refuse it).
    assert!(
        req.headers[header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .contains(CALLERS)
    );
    // The caller's own token and the brokered one are masked wherever they show up.
    let masked = head
        .maskers
        .1
        .mask_all(format!("{CALLERS} {BROKERED}").as_bytes())
        .0;
    let masked = String::from_utf8_lossy(&masked);
    assert!(
        !masked.contains(CALLERS) && !masked.contains(BROKERED),
        "{masked}"
    );

    let _ = p.upstream_request(&ex, head, &mut req);
    assert_eq!(
        req.headers[header::AUTHORIZATION],
        HeaderValue::from_str(&format!("Bearer {BROKERED}")).unwrap()
    );
}

#[tokio::test]
async fn where_no_token_belongs_the_callers_own_is_taken_out_too() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path());
    let (ex, mut req) = with_callers_token("GET", "raw.githubusercontent.com", "/o/r/main/README.md");
    let mut head = p.begin(&ex);
    assert!(p.request_filter(&ex, &mut head, &req).await.is_none());
    assert!(matches!(head.credential, Some(Credential::Strip)));
    let _ = p.upstream_request(&ex, head, &mut req);
    assert!(!req.headers.contains_key(header::AUTHORIZATION));
}

#[tokio::test]
async fn a_refusal_stops_the_exchange_before_the_policy_or_anything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path());
    // Another caller: no profile, and the default refuses.
    let (mut ex, req) = with_callers_token("DELETE", "api.github.com", "/repos/o/r");
    let mut conn = testing::caller();
    conn.uid = conn.uid.wrapping_add(1);
    let info = Arc::get_mut(&mut ex.conn).unwrap();
    info.caller = conn;
    let mut head = p.begin(&ex);
    let refused = p.request_filter(&ex, &mut head, &req).await.expect("refused");
    assert_eq!(refused.status(), 403);
    assert!(
        String::from_utf8_lossy(refused.body()).contains("no credential profile matches this caller"),
        "identity answers first, not the policy's delete rule"
    );
    assert!(head.credential.is_none() && head.plan.is_none());

    // This caller has a profile: the policy refuses the delete, and no token was minted for
    // it to carry.
    let (ex, req) = with_callers_token("DELETE", "api.github.com", "/repos/o/r");
    let mut head = p.begin(&ex);
    let refused = p.request_filter(&ex, &mut head, &req).await.expect("refused");
    assert_eq!(refused.status(), 403);
    assert!(String::from_utf8_lossy(refused.body()).contains("no-deletes"));
}
