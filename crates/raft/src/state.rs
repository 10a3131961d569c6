//! The deterministic configuration state: policies with their version history, grants, upstreams,
//! one revision number and a bounded change log.
//!
//! [`ConfigState::apply`] is a pure function of the state and the request: no clock, no randomness,
//! ordered maps only, so every node that applies the same log reaches byte-identical snapshots.
//!
//! # Revisions and the change log
//!
//! The revision starts at 0 and rises by exactly one per applied change; a rejected request or a
//! Raft-internal entry leaves it alone. Every applied change is also recorded as a
//! [`ChangeRecord`] in a change log that keeps the last [`CHANGE_LOG_CAPACITY`] records (it is part
//! of the snapshot, so a restarted node can still resume watchers). A watcher that holds revision
//! `r` resumes with [`ConfigState::changes_since`]: if every revision after `r` is still in the log
//! it gets them in order; otherwise (it is too far behind, or claims a revision this state has not
//! reached) it gets `None` and must start over from a full snapshot of the state.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{Request, Response, TokenHash};

/// How many applied changes the change log keeps for watch resumption.
pub const CHANGE_LOG_CAPACITY: usize = 1024;

/// A request the state machine refused. This is replicated data (every node refuses alike), not a
/// local failure, which is why it is serializable and lives in [`Response::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// No policy with this id exists.
    #[error("no policy {id}")]
    UnknownPolicy {
        /// Policy id.
        id: String,
    },
    /// The policy exists but not in that version.
    #[error("policy {id} has no version {version}")]
    UnknownPolicyVersion {
        /// Policy id.
        id: String,
        /// The missing version.
        version: u64,
    },
    /// A grant with this id already exists.
    #[error("grant {id} already exists")]
    DuplicateGrant {
        /// Grant id.
        id: String,
    },
    /// Another grant already uses this token hash.
    #[error("token hash already used by grant {id}")]
    DuplicateToken {
        /// The grant that holds the token.
        id: String,
    },
    /// No grant with this id exists.
    #[error("no grant {id}")]
    UnknownGrant {
        /// Grant id.
        id: String,
    },
    /// The grant is already revoked.
    #[error("grant {id} is already revoked")]
    AlreadyRevoked {
        /// Grant id.
        id: String,
    },
    /// No upstream with this name exists.
    #[error("no upstream {name}")]
    UnknownUpstream {
        /// Upstream name.
        name: String,
    },
    /// A put expected another serving version of the policy than the one it has.
    #[error("policy {id} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// Policy id.
        id: String,
        /// The version the proposer expected (0: no policy yet).
        expected: u64,
        /// The serving version when the put was applied (0: no policy yet).
        actual: u64,
    },
}

/// One stored version of a policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Version number, from 1, rising by one per put or rollback of this policy.
    pub version: u64,
    /// The configuration revision that created this version.
    pub revision: u64,
    /// The document as JSON text.
    pub document: String,
    /// Set when this version was made by rolling back to an older one.
    pub rolled_back_from: Option<u64>,
    /// Acceptance time (unix milliseconds) as stamped in the request by its proposer.
    #[serde(default)]
    pub created_at_unix_ms: u64,
}

/// A grant: a client credential bound to one upstream server and one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Grant id.
    pub id: String,
    /// Human-readable label.
    pub label: String,
    /// SHA-256 of the bearer token.
    pub token_sha256: TokenHash,
    /// The upstream server the grant may reach.
    pub server: String,
    /// The policy that applies.
    pub policy_id: String,
    /// Creation time (unix milliseconds) as stamped in the request.
    pub created_at_unix_ms: u64,
    /// Whether the grant was revoked.
    pub revoked: bool,
    /// The revision that created the grant.
    pub created_revision: u64,
    /// The revision that revoked it, if any.
    pub revoked_revision: Option<u64>,
}

/// The effect of one applied change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A policy got a new current version.
    PolicyVersion {
        /// Policy id.
        id: String,
        /// The new version.
        version: PolicyVersion,
    },
    /// A grant was created.
    GrantCreated {
        /// The grant.
        grant: Grant,
    },
    /// A grant was revoked.
    GrantRevoked {
        /// Grant id.
        id: String,
    },
    /// An upstream was inserted or replaced.
    UpstreamPut {
        /// Upstream name.
        name: String,
        /// Its definition.
        spec: serde_json::Value,
    },
    /// An upstream was removed.
    UpstreamRemoved {
        /// Upstream name.
        name: String,
    },
}

/// A change with the revision it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The revision after the change.
    pub revision: u64,
    /// The change.
    pub change: Change,
}

/// The replicated configuration of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    revision: u64,
    policies: BTreeMap<String, Vec<PolicyVersion>>,
    grants: BTreeMap<String, Grant>,
    /// Token hash -> grant id, for unique tokens.
    tokens: BTreeMap<TokenHash, String>,
    upstreams: BTreeMap<String, serde_json::Value>,
    changes: VecDeque<ChangeRecord>,
}

impl ConfigState {
    /// The current configuration revision (0 before the first change).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Every version of a policy, oldest first.
    pub fn policy_versions(&self, id: &str) -> Option<&[PolicyVersion]> {
        self.policies.get(id).map(Vec::as_slice)
    }

    /// The current (latest) version of a policy.
    pub fn current_policy(&self, id: &str) -> Option<&PolicyVersion> {
        self.policies.get(id).and_then(|v| v.last())
    }

    /// Ids of all policies, in order.
    pub fn policy_ids(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }

    /// All grants (revoked ones included), ordered by id.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// One grant by id.
    pub fn grant(&self, id: &str) -> Option<&Grant> {
        self.grants.get(id)
    }

    /// The grant that holds a token hash.
    pub fn grant_by_token(&self, hash: &TokenHash) -> Option<&Grant> {
        self.tokens.get(hash).and_then(|id| self.grants.get(id))
    }

    /// All upstream definitions, ordered by name.
    pub fn upstreams(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.upstreams
    }

    /// The changes after `from_revision`, oldest first, or `None` when the change log no longer
    /// holds all of them (or `from_revision` is ahead of this state): then the watcher needs a full
    /// snapshot.
    pub fn changes_since(&self, from_revision: u64) -> Option<Vec<ChangeRecord>> {
        if from_revision > self.revision {
            return None;
        }
        if from_revision == self.revision {
            return Some(Vec::new());
        }
        let oldest = self.changes.front()?.revision;
        if from_revision + 1 < oldest {
            return None;
        }
        Some(
            self.changes
                .iter()
                .filter(|c| c.revision > from_revision)
                .cloned()
                .collect(),
        )
    }

    /// The oldest revision still in the change log, if any.
    pub fn oldest_logged_revision(&self) -> Option<u64> {
        self.changes.front().map(|c| c.revision)
    }

    /// Apply one request; deterministic. A [`Request::Quota`] is not a configuration change: it
    /// is answered [`Response::Internal`] here and leaves the revision alone; the state machine
    /// routes it to the quota ledger instead (see [`crate::StateMachineData::apply`]).
    pub fn apply(&mut self, request: &Request) -> Response {
        match self.change_for(request) {
            Ok(None) => Response::Internal {
                revision: self.revision,
            },
            Ok(Some((change, policy_version))) => {
                self.revision += 1;
                let revision = self.revision;
                let change = self.commit(change, revision);
                if self.changes.len() == CHANGE_LOG_CAPACITY {
                    self.changes.pop_front();
                }
                self.changes.push_back(ChangeRecord { revision, change });
                Response::Applied {
                    revision,
                    policy_version,
                }
            }
            Err(reason) => Response::Rejected {
                revision: self.revision,
                reason,
            },
        }
    }

    /// Check a request against the state and describe its effect, without changing anything;
    /// `None` for a request that is not a configuration change.
    fn change_for(&self, request: &Request) -> Result<Option<(Change, Option<u64>)>, Rejection> {
        let next_revision = self.revision + 1;
        let change = match request {
            Request::PutPolicy {
                id,
                document,
                expected_version,
                created_at_unix_ms,
            } => {
                if let Some(expected) = *expected_version {
                    let actual = self.current_policy(id).map_or(0, |v| v.version);
                    if expected != actual {
                        return Err(Rejection::VersionMismatch {
                            id: id.clone(),
                            expected,
                            actual,
                        });
                    }
                }
                let version = self.next_policy_version(id);
                let pv = PolicyVersion {
                    version,
                    revision: next_revision,
                    document: document.clone(),
                    rolled_back_from: None,
                    created_at_unix_ms: *created_at_unix_ms,
                };
                Ok((
                    Change::PolicyVersion {
                        id: id.clone(),
                        version: pv,
                    },
                    Some(version),
                ))
            }
            Request::RollbackPolicy {
                id,
                to_version,
                created_at_unix_ms,
            } => {
                let versions = self
                    .policies
                    .get(id)
                    .ok_or_else(|| Rejection::UnknownPolicy { id: id.clone() })?;
                let old = versions
                    .iter()
                    .find(|v| v.version == *to_version)
                    .ok_or_else(|| Rejection::UnknownPolicyVersion {
                        id: id.clone(),
                        version: *to_version,
                    })?;
                let version = self.next_policy_version(id);
                let pv = PolicyVersion {
                    version,
                    revision: next_revision,
                    document: old.document.clone(),
                    rolled_back_from: Some(*to_version),
                    created_at_unix_ms: *created_at_unix_ms,
                };
                Ok((
                    Change::PolicyVersion {
                        id: id.clone(),
                        version: pv,
                    },
                    Some(version),
                ))
            }
            Request::CreateGrant {
                id,
                label,
                token_sha256,
                server,
                policy_id,
                created_at_unix_ms,
            } => {
                if self.grants.contains_key(id) {
                    return Err(Rejection::DuplicateGrant { id: id.clone() });
                }
                if let Some(holder) = self.tokens.get(token_sha256) {
                    return Err(Rejection::DuplicateToken { id: holder.clone() });
                }
                if !self.upstreams.contains_key(server) {
                    return Err(Rejection::UnknownUpstream {
                        name: server.clone(),
                    });
                }
                if !self.policies.contains_key(policy_id) {
                    return Err(Rejection::UnknownPolicy {
                        id: policy_id.clone(),
                    });
                }
                let grant = Grant {
                    id: id.clone(),
                    label: label.clone(),
                    token_sha256: *token_sha256,
                    server: server.clone(),
                    policy_id: policy_id.clone(),
                    created_at_unix_ms: *created_at_unix_ms,
                    revoked: false,
                    created_revision: next_revision,
                    revoked_revision: None,
                };
                Ok((Change::GrantCreated { grant }, None))
            }
            Request::RevokeGrant { id } => {
                let grant = self
                    .grants
                    .get(id)
                    .ok_or_else(|| Rejection::UnknownGrant { id: id.clone() })?;
                if grant.revoked {
                    return Err(Rejection::AlreadyRevoked { id: id.clone() });
                }
                Ok((Change::GrantRevoked { id: id.clone() }, None))
            }
            Request::PutUpstream { name, spec } => Ok((
                Change::UpstreamPut {
                    name: name.clone(),
                    spec: spec.clone(),
                },
                None,
            )),
            Request::RemoveUpstream { name } => {
                if !self.upstreams.contains_key(name) {
                    return Err(Rejection::UnknownUpstream { name: name.clone() });
                }
                Ok((Change::UpstreamRemoved { name: name.clone() }, None))
            }
            Request::Quota { .. } => return Ok(None),
        };
        change.map(Some)
    }

    fn next_policy_version(&self, id: &str) -> u64 {
        self.policies
            .get(id)
            .and_then(|v| v.last())
            .map_or(1, |v| v.version + 1)
    }

    /// Carry out a checked change; returns it for the change log.
    fn commit(&mut self, change: Change, revision: u64) -> Change {
        match &change {
            Change::PolicyVersion { id, version } => {
                self.policies
                    .entry(id.clone())
                    .or_default()
                    .push(version.clone());
            }
            Change::GrantCreated { grant } => {
                self.tokens.insert(grant.token_sha256, grant.id.clone());
                self.grants.insert(grant.id.clone(), grant.clone());
            }
            Change::GrantRevoked { id } => {
                if let Some(grant) = self.grants.get_mut(id) {
                    grant.revoked = true;
                    grant.revoked_revision = Some(revision);
                }
            }
            Change::UpstreamPut { name, spec } => {
                self.upstreams.insert(name.clone(), spec.clone());
            }
            Change::UpstreamRemoved { name } => {
                self.upstreams.remove(name);
            }
        }
        change
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
