//! What the upstream already has, asked through GitHub's REST API with the credential the push
//! itself carries upstream: commits, trees and annotated tags by id, the compare API for
//! ancestry and merge bases, and the default branch's head (what a new ref is compared with).
//!
//! Never puts the credential in an error or a log line; an answer it cannot read is an error
//! (the push's facts become undecidable), never a guess.
use ghgate_git::{
    Oid,
    object::{Commit, ObjectKind, Tag, TreeEntry},
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
    #[error("the API names a tag's object of type {0:?}")]
    TagType(String),
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
        let url = if path.is_empty() {
            base.clone()
        } else {
            format!("{base}/{path}")
        };
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

impl Api {
    /// The head of the repository's default branch: `Ok(None)` when the repository or the
    /// branch is not there (an empty repository).
    pub async fn default_head(&self) -> Result<Option<Oid>, ApiError> {
        let Some(repo) = self.get("").await? else {
            return Ok(None);
        };
        let branch = repo["default_branch"]
            .as_str()
            .ok_or(ApiError::Missing("the default branch"))?;
        let Some(r) = self.get(&format!("git/ref/heads/{branch}")).await? else {
            return Ok(None);
        };
        oid(&r["object"]["sha"]).map(Some)
    }

    /// The best common ancestor of two commits, as the compare API names it (`Ok(None)` when
    /// they share none or one is unknown).
    pub async fn merge_base(&self, a: &Oid, b: &Oid) -> Result<Option<Oid>, ApiError> {
        let Some(v) = self.get(&format!("compare/{a}...{b}")).await? else {
            return Ok(None);
        };
        match &v["merge_base_commit"]["sha"] {
            serde_json::Value::Null => Ok(None),
            sha => oid(sha).map(Some),
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

    async fn tag(&self, id: &Oid) -> Result<Option<Tag>, ApiError> {
        let Some(v) = self.get(&format!("git/tags/{id}")).await? else {
            return Ok(None);
        };
        let kind = v["object"]["type"]
            .as_str()
            .ok_or(ApiError::Missing("a tag's object type"))?;
        let kind =
            ObjectKind::from_name(kind.as_bytes()).ok_or_else(|| ApiError::TagType(kind.to_owned()))?;
        Ok(Some(Tag {
            object: oid(&v["object"]["sha"])?,
            kind,
            name: v["tag"].as_str().unwrap_or_default().to_owned(),
        }))
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
