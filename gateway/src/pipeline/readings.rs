//! One request, one meaning, across the daemon's stages: every spelling GitHub reads as the same
//! request is read alike by push detection, the recorder, the policy, the credentials and the
//! masking routes, because each reads the one classification. (What the classifier itself makes
//! of each spelling is tested in `ghgate_policy::classify`.)
use std::path::Path;

use ghgate_policy::{
    Action, Policy, Subject, Target,
    classify::{Classified, GitHub, Repo},
};
use http::StatusCode;

use crate::{
    credentials::{self, Scheme},
    mask::{FingerprintKey, MaskConfig, ResponseMasking, policy::MaskSet},
    record::recorder::git_kind,
};

/// Every stage's reading of one request, side by side: push detection (the policy's head
/// decision), the recorder's git kind, the policy's facts (a rule by repository and service),
/// the credentials' scheme and scope, and the masking route.
#[derive(Debug, PartialEq)]
struct Readings {
    push: bool,
    recorded_as: &'static str,
    policy_denies: bool,
    credential: Option<(Scheme, Option<Repo>)>,
    masking: ResponseMasking,
}

fn readings(c: &Classified) -> Readings {
    let policy = Policy::parse(
        "default = \"allow\"\n[[rule]]\nname = \"no-pushes-to-o-r\"\naction = \"deny\"\n\
         repository = \"o/r\"\ngit_service = \"receive-pack\"\n",
        Path::new("p.toml"),
    )
    .unwrap();
    let mask: MaskConfig =
        toml::from_str("[[route]]\nhost = \"github.com\"\npath = \"/o/r.git/*\"\nresponses = \"off\"\n")
            .unwrap();
    let mask = MaskSet::new(&mask, FingerprintKey::new([3; 32])).unwrap();
    let verdict = policy.evaluate(&Subject::default(), &Target::new(c.clone()), None);
    Readings {
        push: c.is_push(),
        recorded_as: git_kind(c).as_str(),
        policy_denies: verdict.action == Action::Deny,
        credential: credentials::scheme(c, &GitHub::default()).map(|s| (s, c.repository.clone())),
        masking: mask.responses(&c.host, &c.path),
    }
}

/// A request as `ghgate policy explain` and the tests give it: classified as on a connection
/// to its own host.
fn request(method: &str, url: &str) -> Result<Classified, ghgate_policy::classify::Refusal> {
    Classified::from_url(method, url, &GitHub::default())
}

#[test]
fn every_stage_reads_each_spelling_of_a_push_alike() {
    let want = readings(&request("POST", "https://github.com/o/r.git/git-receive-pack").unwrap());
    assert_eq!(
        want,
        Readings {
            push: true,
            recorded_as: "push",
            policy_denies: true,
            credential: Some((
                Scheme::Basic,
                Some(Repo::Named {
                    owner: "o".into(),
                    name: "r".into()
                })
            )),
            masking: ResponseMasking::Off,
        }
    );
    // Spellings GitHub reads as the same push: every stage sees the same push.
    for url in [
        "https://github.com/O/R.GIT/git-receive-pack",
        "https://github.com/o/r.git/GIT-RECEIVE-PACK",
        "https://github.com/%6F/%72.git/git-receive-pack",
        "https://github.com/o/r/git-receive-pack",
        "https://GitHub.com./o/r.git/git-receive-pack",
        "https://github.com:443/o/r.git/git-receive-pack",
        "https://github.com/o/r.git/git-receive-pack/",
    ] {
        let mut got = readings(&request("POST", url).unwrap_or_else(|e| panic!("{url}: {e}")));
        if url.ends_with("/o/r/git-receive-pack") {
            // No `.git`: the mask route for `/o/r.git/*` is a different path, as it is upstream.
            got.masking = want.masking;
        }
        assert_eq!(got, want, "{url}");
    }
    // Spellings that could hide a push from one stage: refused before any stage reads them.
    for url in [
        "https://github.com/o%2Fr.git/git-receive-pack",
        "https://github.com/o/r.git%2Fgit-receive-pack",
        "https://github.com/o/r.git%252Fgit-receive-pack",
        "https://github.com/o/x/%2e%2e/r.git/git-receive-pack",
        "https://github.com/o//r.git/git-receive-pack",
    ] {
        let refused = request("POST", url).map(|c| readings(&c)).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{url}");
    }
}

#[test]
fn every_stage_reads_each_spelling_of_an_api_call_alike() {
    // The REST API: the repository a rule names and a token is scoped to is the one GitHub
    // serves, whatever the case or escapes.
    let want = readings(&request("GET", "https://api.github.com/repos/o/r/contents/x").unwrap());
    assert_eq!(want.credential.as_ref().map(|c| c.0), Some(Scheme::Bearer));
    for path in [
        "/repos/O/R/contents/x",
        "/REPOS/o/r/contents/x",
        "/repos/%4f/r/contents/x",
        "/repos/o/r/contents/%78",
    ] {
        let c = request("GET", &format!("https://api.github.com{path}")).unwrap();
        assert_eq!(readings(&c), want, "{path}");
    }
}
