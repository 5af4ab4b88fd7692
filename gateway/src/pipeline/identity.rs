//! The identity and credentials stage: who is calling (an OIDC token the caller presents is
//! validated; 401 if it is not good), and what goes upstream for them (the first
//! `[[credentials.rule]]` the caller matches gives a profile whose token replaces whatever the
//! caller sent — only where a token belongs; 403 when none matches and the default refuses).
//!
//! Never logs or records a token: the identity record names the kind of credential only.
use ::http::StatusCode;

use super::{Pipeline, refuse};
use crate::{
    config::NoProfile,
    credentials::{self, Scheme, Secret},
    http::Exchange,
    record::model::{self, CredentialKind},
};

/// What goes upstream as a request's credential, for a caller with a profile.
pub enum Credential {
    /// The profile's token, in the request's scheme.
    Inject(Secret, Scheme),
    /// Nothing: the request goes where no token belongs, and the caller's own is removed.
    Strip,
}

/// What identity and credentials decided for one request.
pub struct Decision {
    pub identity: model::Identity,
    pub credential: Option<Credential>,
    pub refusal: Option<::http::Response<bytes::Bytes>>,
    /// The claims of the OIDC token the caller proved, for the policy.
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Pipeline {
    /// Identity and credentials: who is calling, and what goes upstream for them.
    pub(super) async fn decide(&self, ex: &Exchange, presented: Option<&Secret>) -> Decision {
        let mut identity = model::Identity {
            session: ex.conn.session.clone(),
            exchange: ex.id,
            at: model::now_micros(),
            oidc_issuer: None,
            oidc_subject: None,
            oidc_claims: None,
            profile: None,
            credential: if presented.is_some() {
                CredentialKind::Passed
            } else {
                CredentialKind::None
            },
            refused: None,
        };
        let refused = |mut identity: model::Identity, status: StatusCode, why: String| {
            identity.credential = CredentialKind::Refused;
            identity.refused = Some(why.clone());
            Decision {
                identity,
                credential: None,
                refusal: Some(refuse(status, format!("ghgate: {why}\n"))),
                claims: None,
            }
        };
        // An OIDC token stands for an identity, not for a credential GitHub would take.
        let mut claims = None;
        if let (Some(oidc), Some(token)) = (&self.oidc, presented)
            && oidc.is_candidate(token.expose())
        {
            // Boxed: a validation may fetch the issuer's keys, state every request's future
            // would otherwise carry (see `http::forward`).
            match Box::pin(oidc.validate(token.expose())).await {
                Ok(c) => {
                    identity.oidc_issuer = Some(c.issuer.clone());
                    identity.oidc_subject = Some(c.subject.clone());
                    let shown: serde_json::Map<String, serde_json::Value> = c
                        .all
                        .iter()
                        .filter(|(k, _)| {
                            !matches!(k.as_str(), "iss" | "sub" | "aud" | "exp" | "nbf" | "iat" | "jti")
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    identity.oidc_claims = Some(serde_json::Value::Object(shown).to_string());
                    claims = Some(c.all);
                }
                Err(e) => {
                    return refused(
                        identity,
                        StatusCode::UNAUTHORIZED,
                        format!("the OIDC token was refused: {e}"),
                    );
                }
            }
        }
        if !self.broker.is_active() && claims.is_none() {
            return Decision {
                identity,
                credential: None,
                refusal: None,
                claims,
            };
        }
        match self
            .broker
            .profile_for(&crate::identity::subject(&ex.conn.caller, claims.as_ref()))
        {
            Some(profile) => {
                identity.profile = Some(profile.name.clone());
                // No token where none belongs (user content, other hosts, WebSocket upgrades):
                // nothing is minted, and the caller's own credential goes nowhere either.
                let Some(scheme) = credentials::scheme(&ex.req, &self.github) else {
                    if presented.is_some() {
                        identity.credential = CredentialKind::Stripped;
                    }
                    return Decision {
                        identity,
                        credential: Some(Credential::Strip),
                        refusal: None,
                        claims,
                    };
                };
                match profile
                    .token(ex.req.repository.as_ref(), ex.conn.caller.cgroup_id)
                    .await
                {
                    Ok(token) => {
                        identity.credential = CredentialKind::Brokered;
                        Decision {
                            identity,
                            credential: Some(Credential::Inject(token, scheme)),
                            refusal: None,
                            claims,
                        }
                    }
                    Err(e @ credentials::CredentialError::NoRepository) => refused(
                        identity,
                        StatusCode::FORBIDDEN,
                        format!("credential profile {:?}: {e}", profile.name),
                    ),
                    Err(e) => refused(
                        identity,
                        StatusCode::BAD_GATEWAY,
                        format!("nothing was forwarded: {e}"),
                    ),
                }
            }
            None if claims.is_some() => refused(
                identity.clone(),
                StatusCode::FORBIDDEN,
                format!(
                    "no credential profile matches this OIDC identity ({}); add a [[credentials.rule]] with oidc claims for it",
                    identity.oidc_subject.as_deref().unwrap_or("?")
                ),
            ),
            None if self.broker.default() == NoProfile::Refuse => {
                let c = &ex.conn.caller;
                refused(
                    identity,
                    StatusCode::FORBIDDEN,
                    format!(
                        "no credential profile matches this caller (uid {}, exe {}); add a [[credentials.rule]] for it",
                        c.uid,
                        c.exe
                            .as_ref()
                            .map_or("unknown".into(), |e| e.display().to_string())
                    ),
                )
            }
            None => Decision {
                identity,
                credential: None,
                refusal: None,
                claims,
            },
        }
    }
}
