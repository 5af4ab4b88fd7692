use http::{Request, Version};

use super::*;

/// A request head as hyper hands it over: `target` as sent (origin or absolute form), headers
/// in order.
fn head(method: &str, target: &str, version: Version, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(target).version(version);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// An HTTP/1.1 request for `host` on a connection opened for `sni`.
fn h1(method: &str, host: &str, target: &str, sni: &str) -> Result<Classified, Refusal> {
    classify(
        &head(method, target, Version::HTTP_11, &[("host", host)]),
        sni,
        &GitHub::default(),
    )
}

fn ok(method: &str, host: &str, target: &str) -> Classified {
    let sni = host_and_port(host).unwrap().0;
    h1(method, host, target, &sni).unwrap_or_else(|e| panic!("{method} {host}{target}: {e}"))
}

fn named(owner: &str, name: &str) -> Option<Repo> {
    Some(Repo::Named {
        owner: owner.into(),
        name: name.into(),
    })
}

#[test]
fn real_request_shapes() {
    use GitService::*;
    struct Case {
        method: &'static str,
        host: &'static str,
        target: &'static str,
        kind: Kind,
        repo: Option<Repo>,
        git: Option<GitEndpoint>,
        service: Option<GitService>,
        copilot: Option<Copilot>,
    }
    let case = |method, host, target, kind, repo, git, service, copilot| Case {
        method,
        host,
        target,
        kind,
        repo,
        git,
        service,
        copilot,
    };
    let cases = [
        // The REST API.
        case(
            "GET",
            "api.github.com",
            "/repos/o/r",
            Kind::RestApi,
            named("o", "r"),
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/repos/o/r/actions/runs?page=2",
            Kind::RestApi,
            named("o", "r"),
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/repos/Octo-Org/Hello.World/pulls/1",
            Kind::RestApi,
            named("octo-org", "hello.world"),
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/repositories/1296269/issues",
            Kind::RestApi,
            Some(Repo::Id(1296269)),
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/repositories/not-a-number",
            Kind::RestApi,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/user",
            Kind::RestApi,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "api.github.com",
            "/repos/o",
            Kind::RestApi,
            None,
            None,
            None,
            None,
        ),
        // A git path on the API host is not git: GitHub's API does not serve it.
        case(
            "POST",
            "api.github.com",
            "/o/r.git/git-receive-pack",
            Kind::RestApi,
            None,
            None,
            None,
            None,
        ),
        case(
            "POST",
            "uploads.github.com",
            "/repos/o/r/releases/7/assets?name=a.zip",
            Kind::RestApi,
            named("o", "r"),
            None,
            None,
            None,
        ),
        // GraphQL.
        case(
            "POST",
            "api.github.com",
            "/graphql",
            Kind::GraphQl,
            None,
            None,
            None,
            None,
        ),
        // Git smart HTTP.
        case(
            "GET",
            "github.com",
            "/o/r.git/info/refs?service=git-upload-pack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::InfoRefs),
            Some(UploadPack),
            None,
        ),
        case(
            "GET",
            "github.com",
            "/o/r.git/info/refs?service=git-receive-pack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::InfoRefs),
            Some(ReceivePack),
            None,
        ),
        case(
            "GET",
            "github.com",
            "/o/r/info/refs?x=1&service=git-receive-pack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::InfoRefs),
            Some(ReceivePack),
            None,
        ),
        case(
            "GET",
            "github.com",
            "/o/r.git/info/refs?service=git%2Dreceive%2Dpack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::InfoRefs),
            Some(ReceivePack),
            None,
        ),
        case(
            "GET",
            "github.com",
            "/o/r.git/info/refs",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::InfoRefs),
            None,
            None,
        ),
        case(
            "POST",
            "github.com",
            "/o/r.git/git-upload-pack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::Rpc(UploadPack)),
            Some(UploadPack),
            None,
        ),
        case(
            "POST",
            "github.com",
            "/o/r/git-receive-pack",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::Rpc(ReceivePack)),
            Some(ReceivePack),
            None,
        ),
        // Git LFS.
        case(
            "POST",
            "github.com",
            "/o/r.git/info/lfs/objects/batch",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::Lfs),
            None,
            None,
        ),
        case(
            "POST",
            "github.com",
            "/o/r.git/info/lfs/locks/verify",
            Kind::Git,
            named("o", "r"),
            Some(GitEndpoint::Lfs),
            None,
            None,
        ),
        // The web.
        case(
            "GET",
            "github.com",
            "/o/r/pull/1",
            Kind::Other,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "github.com",
            "/repos/o/r",
            Kind::Other,
            None,
            None,
            None,
            None,
        ),
        // Copilot.
        case(
            "GET",
            "api.github.com",
            "/copilot_internal/v2/token",
            Kind::RestApi,
            None,
            None,
            None,
            Some(Copilot::Token),
        ),
        case(
            "GET",
            "api.github.com",
            "/copilot_internal/user",
            Kind::RestApi,
            None,
            None,
            None,
            Some(Copilot::User),
        ),
        case(
            "GET",
            "api.github.com",
            "/copilot_internal/content_exclusion",
            Kind::RestApi,
            None,
            None,
            None,
            Some(Copilot::Other),
        ),
        case(
            "POST",
            "api.githubcopilot.com",
            "/chat/completions",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Chat),
        ),
        case(
            "POST",
            "api.individual.githubcopilot.com",
            "/v1/chat/completions?x",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Chat),
        ),
        case(
            "POST",
            "api.githubcopilot.com",
            "/responses",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Chat),
        ),
        case(
            "POST",
            "copilot-proxy.githubusercontent.com",
            "/v1/engines/copilot-codex/completions",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Completions),
        ),
        case(
            "POST",
            "proxy.individual.githubcopilot.com",
            "/v1/completions",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Completions),
        ),
        case(
            "POST",
            "api.githubcopilot.com",
            "/embeddings",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Embeddings),
        ),
        case(
            "GET",
            "api.githubcopilot.com",
            "/models/gpt-4o/policy",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Models),
        ),
        case(
            "POST",
            "api.githubcopilot.com",
            "/agents/github/chat",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Agents),
        ),
        case(
            "POST",
            "api.githubcopilot.com",
            "/telemetry",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Other),
        ),
        case(
            "POST",
            "API.GithubCopilot.com.",
            "/Chat/Completions",
            Kind::Copilot,
            None,
            None,
            None,
            Some(Copilot::Chat),
        ),
        case(
            "POST",
            "github.com",
            "/chat/completions",
            Kind::Other,
            None,
            None,
            None,
            None,
        ),
        // User content: never git, whatever the path looks like.
        case(
            "GET",
            "raw.githubusercontent.com",
            "/o/r/main/README.md",
            Kind::UserContent,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "raw.githubusercontent.com",
            "/o/r/info/refs",
            Kind::UserContent,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "objects.githubusercontent.com",
            "/github-production-release-asset-2e65be/1?X-Amz-Signature=abc",
            Kind::UserContent,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "o.github.io",
            "/r/index.html",
            Kind::UserContent,
            None,
            None,
            None,
            None,
        ),
        case(
            "GET",
            "codeload.github.com",
            "/o/r/tar.gz/refs/heads/main",
            Kind::Other,
            None,
            None,
            None,
            None,
        ),
    ];
    for c in cases {
        let got = ok(c.method, c.host, c.target);
        let what = format!("{} {}{}", c.method, c.host, c.target);
        assert_eq!(got.kind, c.kind, "{what}");
        assert_eq!(got.repository, c.repo, "{what}");
        assert_eq!(got.git, c.git, "{what}");
        assert_eq!(got.git_service, c.service, "{what}");
        assert_eq!(got.copilot, c.copilot, "{what}");
        if let Some(copilot) = c.copilot {
            assert!(COPILOT_NAMES.contains(&copilot.as_str()));
        }
    }
}

#[test]
fn push_fetch_and_advertisement_are_told_apart() {
    let push = ok("POST", "github.com", "/o/r.git/git-receive-pack");
    assert!(push.is_push() && !push.is_fetch() && !push.is_advertisement());
    let fetch = ok("POST", "github.com", "/o/r.git/git-upload-pack");
    assert!(fetch.is_fetch() && !fetch.is_push());
    let adv = ok("GET", "github.com", "/o/r.git/info/refs?service=git-receive-pack");
    assert!(adv.is_advertisement() && adv.is_push_advertisement() && !adv.is_push());
    let adv = ok("GET", "github.com", "/o/r.git/info/refs?service=git-upload-pack");
    assert!(adv.is_advertisement() && !adv.is_push_advertisement());
    // A receive-pack path is receive-pack at any depth (the riskier reading), even where no
    // repository can be named from it.
    let deep = ok("POST", "github.com", "/x/o/r.git/git-receive-pack");
    assert!(deep.is_push());
    assert_eq!(deep.repository, None);
    // Several `service=`: receive-pack wins.
    let both = ok(
        "GET",
        "github.com",
        "/o/r.git/info/refs?service=git-upload-pack&service=git-receive-pack",
    );
    assert!(both.is_push_advertisement());
}

#[test]
fn hosts_are_normalised_and_checked_against_the_sni() {
    for host in [
        "github.com",
        "GitHub.COM",
        "github.com.",
        "github.com:443",
        "GITHUB.COM.:8443",
    ] {
        let c = h1("GET", host, "/", "github.com").unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(c.host, "github.com", "{host}");
    }
    assert_eq!(ok("GET", "github.com:8443", "/").authority(), "github.com:8443");
    // The SNI is normalised alike.
    assert!(h1("GET", "github.com", "/", "GitHub.com.").is_ok());
    // Another host on this connection: 421, whatever the spelling.
    for host in [
        "api.github.com",
        "evil.example",
        "github.com.evil.example",
        "github.co",
    ] {
        let e = h1("GET", host, "/", "github.com").unwrap_err();
        assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(matches!(e, Refusal::Misdirected { .. }), "{host}");
    }
    // Not host names at all: 400.
    for host in [
        "",
        "user@github.com",
        "git hub.com",
        "github..com",
        "github.com:99999",
        "github.com:x",
        "github.com..",
    ] {
        let e = h1("GET", host, "/", "github.com").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{host:?}: {e}");
    }
}

#[test]
fn the_authority_is_one_and_agrees() {
    let g = GitHub::default();
    // No authority at all.
    let none = head("GET", "/", Version::HTTP_11, &[]);
    assert_eq!(classify(&none, "github.com", &g), Err(Refusal::NoAuthority));
    // Two Host headers, even when they agree.
    let two = head(
        "GET",
        "/",
        Version::HTTP_11,
        &[("host", "github.com"), ("host", "github.com")],
    );
    assert_eq!(classify(&two, "github.com", &g), Err(Refusal::TwoHosts));
    // Absolute form: the URI's authority, and a Host that must agree.
    let abs = head(
        "GET",
        "https://github.com/o/r",
        Version::HTTP_11,
        &[("host", "github.com:443")],
    );
    assert_eq!(classify(&abs, "github.com", &g).unwrap().host, "github.com");
    let disagree = head(
        "GET",
        "https://github.com/o/r",
        Version::HTTP_11,
        &[("host", "api.github.com")],
    );
    let e = classify(&disagree, "github.com", &g).unwrap_err();
    assert!(matches!(e, Refusal::HostDisagrees { .. }), "{e}");
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    let other_port = head(
        "GET",
        "https://github.com:8443/o/r",
        Version::HTTP_11,
        &[("host", "github.com")],
    );
    assert!(matches!(
        classify(&other_port, "github.com", &g),
        Err(Refusal::HostDisagrees { .. })
    ));
    // Absolute form without Host names the host; another host is misdirected.
    let abs_only = head("GET", "https://api.github.com/user", Version::HTTP_11, &[]);
    assert!(matches!(
        classify(&abs_only, "github.com", &g),
        Err(Refusal::Misdirected { .. })
    ));
    // HTTP/2: `:authority` (which hyper puts in the URI), and a `host` beside it must agree.
    let h2 = head("GET", "https://API.github.com./user", Version::HTTP_2, &[]);
    assert_eq!(
        classify(&h2, "api.github.com", &g).unwrap().host,
        "api.github.com"
    );
    let h2_both = head(
        "GET",
        "https://api.github.com/user",
        Version::HTTP_2,
        &[("host", "github.com")],
    );
    assert!(matches!(
        classify(&h2_both, "api.github.com", &g),
        Err(Refusal::HostDisagrees { .. })
    ));
}

#[test]
fn paths_are_canonical() {
    let cases = [
        ("/repos/%6Frg/r?q=%6F", "/repos/org/r", Some("q=%6F")),
        (
            "/repos/o/r/contents/a%2fb%3a",
            "/repos/o/r/contents/a%2fb%3A",
            None,
        ),
        ("/repos/o/r/contents/%7e%41", "/repos/o/r/contents/~A", None),
        ("/", "/", None),
    ];
    // Off the strict hosts, escapes of reserved characters stay escapes (with upper-case hex).
    for (raw, want, query) in cases {
        let c = ok("GET", "raw.githubusercontent.com", raw);
        let want = want.replace("%2fb", "%2Fb");
        assert_eq!(c.path, want, "{raw}");
        assert_eq!(c.query.as_deref(), query, "{raw}");
    }
    let c = ok("GET", "raw.githubusercontent.com", "/o/r/main/a%2fb/é%7e");
    assert_eq!(c.path, "/o/r/main/a%2Fb/é~");
    assert_eq!(
        ok("GET", "api.github.com", "/repos/o/r/contents/a%20b").path,
        "/repos/o/r/contents/a%20b"
    );
    // A trailing slash is not an empty segment.
    assert_eq!(
        ok("GET", "api.github.com", "/repos/o/r/").repository,
        named("o", "r")
    );
}

#[test]
fn spellings_github_could_read_otherwise_are_refused_on_the_api_and_git_paths() {
    let refused = [
        ("api.github.com", "/repos/o//r"),
        ("api.github.com", "/repos/o/r/../x"),
        ("api.github.com", "/repos/o/./r"),
        ("api.github.com", "/repos/o/r/%2e%2e/x"),
        ("api.github.com", "/repos/o/r/%2E%2e/x"),
        ("api.github.com", "/repos/o/r/%2e"),
        ("api.github.com", "/repos/o%2Fr/contents"),
        ("api.github.com", "/repos/o%2fr/contents"),
        ("api.github.com", "/repos/o%5Cr/contents"),
        ("api.github.com", "/repos/o%252Fr/contents"),
        ("api.github.com", "/repos/o%25%32%46r/contents"),
        ("api.github.com", "/repos/o/r%252e%252e"),
        ("api.github.com", "/repos/o/r%25252F"),
        ("api.github.com", "/repos/o/r%00"),
        ("api.github.com", "/repos/o/r%0A"),
        ("api.github.com", "/repos/o/r%7F"),
        ("api.github.com", "/repos/o/r%"),
        ("api.github.com", "/repos/o/r%zz"),
        ("uploads.github.com", "/repos/o/r/../x/releases/1/assets"),
        ("github.com", "/o/r.git%2Fgit-receive-pack"),
        ("github.com", "/o%2Fr.git/git-receive-pack"),
        ("github.com", "/o/r.git%252Fgit-receive-pack"),
        ("github.com", "/o//r.git/git-receive-pack"),
        ("github.com", "/o/x/../r.git/git-receive-pack"),
        ("github.com", "/o/x/%2e%2e/r.git/git-receive-pack"),
        ("github.com", "/o/r.git/info%2Frefs?service=git-receive-pack"),
        ("github.com", "/o/r%5Cgit-receive-pack"),
        (
            "github.com",
            "/o/r.git/info/lfs/../../x.git/info/lfs/objects/batch",
        ),
    ];
    for (host, raw) in refused {
        let e = h1("POST", host, raw, host).expect_err(raw);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{host}{raw}: {e}");
        assert!(matches!(e, Refusal::BadPath { .. }), "{host}{raw}: {e}");
    }
    // Off the API and git paths the same spellings pass (canonicalised), as GitHub's other
    // hosts take them.
    for (host, raw) in [
        ("raw.githubusercontent.com", "/o/r/main/a%2Fb"),
        ("github.com", "/o/r/blob/main/a%2Fb"),
        ("api.githubcopilot.com", "/models//x"),
    ] {
        assert!(h1("GET", host, raw, host).is_ok(), "{host}{raw}");
    }
    // A path that is not a path.
    let star = head("OPTIONS", "*", Version::HTTP_11, &[("host", "github.com")]);
    assert!(matches!(
        classify(&star, "github.com", &GitHub::default()),
        Err(Refusal::BadPath { .. })
    ));
}

#[test]
fn body_codings_are_read_once_from_the_head() {
    let g = GitHub::default();
    let with = |values: &[&str]| {
        let mut headers = vec![("host", "api.github.com")];
        headers.extend(values.iter().map(|v| ("content-encoding", *v)));
        classify(
            &head("POST", "/graphql", Version::HTTP_11, &headers),
            "api.github.com",
            &g,
        )
    };
    assert_eq!(with(&[]).unwrap().body_coding, None);
    assert_eq!(with(&["identity"]).unwrap().body_coding, None);
    assert_eq!(with(&["GZIP"]).unwrap().body_coding, Some(Coding::Gzip));
    assert_eq!(with(&["br"]).unwrap().body_coding, Some(Coding::Brotli));
    for bad in [&["x-unknown"][..], &["zstd"], &["gzip, br"], &["gzip", "gzip"]] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
        assert!(e.to_string().contains("nothing was forwarded"), "{e}");
    }
}

#[test]
fn websocket_handshakes_are_marked() {
    let g = GitHub::default();
    let ws = head(
        "GET",
        "/ws",
        Version::HTTP_11,
        &[
            ("host", "api.githubcopilot.com"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ],
    );
    assert!(classify(&ws, "api.githubcopilot.com", &g).unwrap().websocket);
    let plain = head(
        "GET",
        "/ws",
        Version::HTTP_11,
        &[("host", "api.githubcopilot.com")],
    );
    assert!(!classify(&plain, "api.githubcopilot.com", &g).unwrap().websocket);
}

#[test]
fn where_github_serves_what_comes_from_one_url() {
    let dotcom = GitHub::default();
    assert_eq!(
        (dotcom.api_host(), dotcom.web_host()),
        ("api.github.com", "github.com")
    );
    let tests = GitHub::from_api_url("https://api.github.com:39211").unwrap();
    assert_eq!(
        (tests.api_host(), tests.web_host()),
        ("api.github.com", "github.com")
    );
    // GitHub Enterprise Server: one host, the API under /api/v3, GraphQL at /api/graphql.
    let ghes = GitHub::from_api_url("https://GHE.example.com/api/v3/").unwrap();
    assert_eq!(
        (ghes.api_host(), ghes.web_host()),
        ("ghe.example.com", "ghe.example.com")
    );
    let c = |method: &str, target: &str| {
        classify(
            &head(method, target, Version::HTTP_11, &[("host", "ghe.example.com")]),
            "ghe.example.com",
            &ghes,
        )
        .unwrap()
    };
    let api = c("GET", "/api/v3/repos/O/R/pulls");
    assert_eq!((api.kind, api.repository), (Kind::RestApi, named("o", "r")));
    assert_eq!(c("POST", "/api/graphql").kind, Kind::GraphQl);
    let push = c("POST", "/o/r.git/git-receive-pack");
    assert_eq!((push.kind, push.repository.clone()), (Kind::Git, named("o", "r")));
    assert!(push.is_push());
    assert_eq!(c("GET", "/o/r/pulls").kind, Kind::Other);
    assert!(GitHub::from_api_url("api.github.com").is_err());
    assert!(GitHub::from_api_url("https://user@api.github.com").is_err());
}

/// What this crate reads of one request, side by side: push detection, the repository and
/// service, and the policy's verdict under a rule naming them. The daemon's stages (the
/// recorder's git kind, the credentials' scheme, the masking route) are compared alike in the
/// daemon (`pipeline::readings`).
#[derive(Debug, PartialEq)]
struct Readings {
    push: bool,
    kind: Kind,
    repository: Option<Repo>,
    service: Option<GitService>,
    policy_denies: bool,
}

fn readings(c: &Classified) -> Readings {
    use crate::{Action, Policy, Subject, Target};
    let policy = Policy::parse(
        "default = \"allow\"\n[[rule]]\nname = \"no-pushes-to-o-r\"\naction = \"deny\"\n\
         repository = \"o/r\"\ngit_service = \"receive-pack\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let verdict = policy.evaluate(&Subject::default(), &Target::new(c.clone()), None);
    Readings {
        push: c.is_push(),
        kind: c.kind,
        repository: c.repository.clone(),
        service: c.git_service,
        policy_denies: verdict.action == Action::Deny,
    }
}

#[test]
fn every_reading_of_a_push_is_the_same_whatever_its_spelling() {
    let plain = ok("POST", "github.com", "/o/r.git/git-receive-pack");
    let want = readings(&plain);
    assert_eq!(
        want,
        Readings {
            push: true,
            kind: Kind::Git,
            repository: named("o", "r"),
            service: Some(GitService::ReceivePack),
            policy_denies: true,
        }
    );
    // Spellings GitHub reads as the same push: every reading is the same push.
    for (host, target) in [
        ("github.com", "/O/R.GIT/git-receive-pack"),
        ("github.com", "/o/r.git/GIT-RECEIVE-PACK"),
        ("github.com", "/%6F/%72.git/git-receive-pack"),
        ("github.com", "/o/r/git-receive-pack"),
        ("GitHub.com.", "/o/r.git/git-receive-pack"),
        ("github.com:443", "/o/r.git/git-receive-pack"),
        ("github.com", "/o/r.git/git-receive-pack/"),
    ] {
        assert_eq!(readings(&ok("POST", host, target)), want, "{host}{target}");
    }
    // Spellings that could hide a push from one reader: refused before anything reads them.
    for (host, target) in [
        ("github.com", "/o%2Fr.git/git-receive-pack"),
        ("github.com", "/o/r.git%2Fgit-receive-pack"),
        ("github.com", "/o/r.git%252Fgit-receive-pack"),
        ("github.com", "/o/x/%2e%2e/r.git/git-receive-pack"),
        ("github.com", "/o//r.git/git-receive-pack"),
    ] {
        assert_eq!(
            h1("POST", host, target, "github.com")
                .map(|c| readings(&c))
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST,
            "{host}{target}"
        );
    }
    // Another host on github.com's connection, two Hosts, a disagreeing absolute URI.
    assert_eq!(
        h1("POST", "evil.example", "/o/r.git/git-receive-pack", "github.com")
            .unwrap_err()
            .status(),
        StatusCode::MISDIRECTED_REQUEST
    );
    let g = GitHub::default();
    for h in [
        head(
            "POST",
            "/o/r.git/git-receive-pack",
            Version::HTTP_11,
            &[("host", "github.com"), ("host", "evil.example")],
        ),
        head(
            "POST",
            "https://evil.example/o/r.git/git-receive-pack",
            Version::HTTP_11,
            &[("host", "github.com")],
        ),
    ] {
        assert_eq!(
            classify(&h, "github.com", &g).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}

#[test]
fn every_reading_of_an_api_call_is_the_same_whatever_its_spelling() {
    // The REST API: the repository a rule names is the one GitHub serves, whatever the case or
    // escapes.
    let want = ok("GET", "api.github.com", "/repos/o/r/contents/x");
    for target in [
        "/repos/O/R/contents/x",
        "/REPOS/o/r/contents/x",
        "/repos/%4f/r/contents/x",
        "/repos/o/r/contents/%78",
    ] {
        let c = ok("GET", "api.github.com", target);
        assert_eq!(readings(&c), readings(&want), "{target}");
        assert_eq!(c.path.to_ascii_lowercase(), want.path, "{target}");
    }
}
