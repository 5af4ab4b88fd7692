//! What the upstream already has, asked through GitHub's REST API with the credential the push
//! itself carries upstream: commits and trees by id, and the compare API for ancestry.
//!
//! Never puts the credential in an error or a log line; an answer it cannot read is an error
//! (the push's facts become undecidable), never a guess.
use ghgate_git::{
    Oid,
    object::{Commit, TreeEntry},
    walk::ObjectSource,
};
use http::{HeaderName, Method, StatusCode, header};

use ghgate_policy::classify::Repo;

use crate::{credentials::Secret, outbound::Outbound};

/// Why the API could not say.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the push's repository cannot be told from its URL")]
    NoRepository,
    #[error("{0}")]
    Request(String),
    #[error("{path}: the API's answer is not JSON ({error})")]
    NotJson { path: String, error: serde_json::Error },
    #[error("{path}: the API answered {status}")]
    Status { path: String, status: StatusCode },
    #[error("the API's answer lacks {0}")]
    Missing(&'static str),
    #[error("{text:?} in the API's answer is not an object id: {error}")]
    Id {
        text: String,
        error: ghgate_git::oid::OidError,
    },
    #[error("the API truncated tree {0}")]
    Truncated(Oid),
    #[error("the compare API answered status {0:?}")]
    Compare(Option<String>),
}

/// The REST API of one repository.
pub struct Api {
    outbound: Outbound,
    /// `https://api.github.com/repos/OWNER/NAME` (or `/repositories/ID`), when the push's
    /// repository is known.
    base: Option<String>,
    token: Option<Secret>,
}

impl Api {
    pub fn new(outbound: Outbound, api_url: &str, repository: Option<&Repo>, token: Option<Secret>) -> Self {
        let api_url = api_url.trim_end_matches('/');
        Self {
            outbound,
            base: repository.map(|r| match r {
                Repo::Named { owner, name } => format!("{api_url}/repos/{owner}/{name}"),
                Repo::Id(id) => format!("{api_url}/repositories/{id}"),
            }),
            token,
        }
    }

    /// GET `path` under the repository: `Ok(None)` for 404 (or 422: GitHub's answer for an
    /// object id it does not have).
    async fn get(&self, path: &str) -> Result<Option<serde_json::Value>, ApiError> {
        let base = self.base.as_ref().ok_or(ApiError::NoRepository)?;
        let url = format!("{base}/{path}");
        let mut headers = vec![
            (header::ACCEPT, "application/vnd.github+json".to_owned()),
            (header::USER_AGENT, "ghgate".to_owned()),
            (
                HeaderName::from_static("x-github-api-version"),
                "2022-11-28".to_owned(),
            ),
        ];
        if let Some(t) = &self.token {
            headers.push((header::AUTHORIZATION, format!("Bearer {}", t.expose())));
        }
        let resp = self
            .outbound
            .request(Method::GET, &url, &headers, None)
            .await
            .map_err(|e| ApiError::Request(e.to_string()))?;
        match resp.status {
            StatusCode::OK => {
                serde_json::from_slice(&resp.body)
                    .map(Some)
                    .map_err(|error| ApiError::NotJson {
                        path: path.to_owned(),
                        error,
                    })
            }
            StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => Ok(None),
            status => Err(ApiError::Status {
                path: path.to_owned(),
                status,
            }),
        }
    }
}

fn oid(v: &serde_json::Value) -> Result<Oid, ApiError> {
    let s = v.as_str().ok_or(ApiError::Missing("an object id"))?;
    s.parse::<Oid>().map_err(|error| ApiError::Id {
        text: s.to_owned(),
        error,
    })
}

impl ObjectSource for Api {
    type Error = ApiError;

    async fn commit(&self, id: &Oid) -> Result<Option<Commit>, ApiError> {
        let Some(v) = self.get(&format!("git/commits/{id}")).await? else {
            return Ok(None);
        };
        let tree = oid(&v["tree"]["sha"])?;
        let parents = v["parents"]
            .as_array()
            .map(|ps| ps.iter().map(|p| oid(&p["sha"])).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        Ok(Some(Commit { tree, parents }))
    }

    async fn tree(&self, id: &Oid) -> Result<Option<Vec<TreeEntry>>, ApiError> {
        let Some(v) = self.get(&format!("git/trees/{id}")).await? else {
            return Ok(None);
        };
        if v["truncated"].as_bool() == Some(true) {
            return Err(ApiError::Truncated(*id));
        }
        let entries = v["tree"]
            .as_array()
            .ok_or(ApiError::Missing("a tree's entries"))?;
        entries
            .iter()
            .map(|e| {
                let mode = e["mode"]
                    .as_str()
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .ok_or(ApiError::Missing("a tree entry's mode"))?;
                let name = e["path"]
                    .as_str()
                    .ok_or(ApiError::Missing("a tree entry's name"))?;
                Ok(TreeEntry {
                    mode,
                    name: name.as_bytes().to_vec(),
                    id: oid(&e["sha"])?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
            .map(Some)
    }

    async fn is_ancestor(&self, ancestor: &Oid, descendant: &Oid) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.get(&format!("compare/{ancestor}...{descendant}")).await? else {
            return Ok(None);
        };
        match v["status"].as_str() {
            Some("ahead" | "identical") => Ok(Some(true)),
            Some("behind" | "diverged") => Ok(Some(false)),
            other => Err(ApiError::Compare(other.map(str::to_owned))),
        }
    }
}
