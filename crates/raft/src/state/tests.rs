use super::*;

fn put(state: &mut ConfigState, id: &str, doc: &str) -> Response {
    state.apply(&put_request(id, doc, None))
}

fn put_request(id: &str, doc: &str, expected_version: Option<u64>) -> Request {
    Request::PutPolicy {
        id: id.into(),
        document: doc.into(),
        expected_version,
        created_at_unix_ms: 1_700_000_000_000,
    }
}

fn github() -> Request {
    Request::PutUpstream {
        name: "github".into(),
        spec: serde_json::json!({"url": "http://127.0.0.1:1"}),
    }
}

/// A state with the policy `p` and the upstream `github` that [`grant`] refers to.
fn with_policy_and_upstream() -> ConfigState {
    let mut s = ConfigState::default();
    put(&mut s, "p", "{}");
    s.apply(&github());
    s
}

fn grant(id: &str, token: u8) -> Request {
    Request::CreateGrant {
        id: id.into(),
        label: "ci".into(),
        token_sha256: TokenHash([token; 32]),
        server: "github".into(),
        policy_id: "p".into(),
        created_at_unix_ms: 1_700_000_000_000,
    }
}

#[test]
fn revision_rises_by_exactly_one_per_applied_change_and_not_on_rejection() {
    let mut s = ConfigState::default();
    assert_eq!(put(&mut s, "p", "{}").revision(), 1);
    assert_eq!(s.apply(&github()).revision(), 2);
    assert_eq!(s.apply(&grant("g", 1)).revision(), 3);
    let rejected = s.apply(&grant("g", 2));
    assert!(matches!(
        rejected,
        Response::Rejected {
            revision: 3,
            reason: Rejection::DuplicateGrant { .. }
        }
    ));
    assert_eq!(s.apply(&github()).revision(), 4);
    assert_eq!(
        s.apply(&Request::RemoveUpstream {
            name: "github".into()
        })
        .revision(),
        5
    );
    assert_eq!(s.revision(), 5);
}

#[test]
fn rollback_creates_a_new_version_equal_to_the_old_one() {
    let mut s = ConfigState::default();
    put(&mut s, "p", "{\"v\":1}");
    let second = put(&mut s, "p", "{\"v\":2}");
    assert!(matches!(
        second,
        Response::Applied {
            policy_version: Some(2),
            ..
        }
    ));
    let back = s.apply(&Request::RollbackPolicy {
        id: "p".into(),
        to_version: 1,
        created_at_unix_ms: 1_700_000_000_999,
    });
    assert_eq!(
        back,
        Response::Applied {
            revision: 3,
            policy_version: Some(3)
        }
    );
    let current = s.current_policy("p").unwrap();
    assert_eq!(current.version, 3);
    assert_eq!(current.document, "{\"v\":1}");
    assert_eq!(current.rolled_back_from, Some(1));
    assert_eq!(current.created_at_unix_ms, 1_700_000_000_999);
    assert_eq!(s.policy_versions("p").unwrap().len(), 3);
    let missing = s.apply(&Request::RollbackPolicy {
        id: "p".into(),
        to_version: 9,
        created_at_unix_ms: 0,
    });
    assert!(matches!(
        missing,
        Response::Rejected {
            reason: Rejection::UnknownPolicyVersion { version: 9, .. },
            ..
        }
    ));
}

#[test]
fn a_revoked_grant_stays_listed_with_its_flag_and_its_token_cannot_be_reused() {
    let mut s = with_policy_and_upstream();
    assert_eq!(s.apply(&grant("g", 7)).revision(), 3);
    let revoked = s.apply(&Request::RevokeGrant { id: "g".into() });
    assert_eq!(revoked.revision(), 4);
    let g = s.grant_by_token(&TokenHash([7; 32])).unwrap();
    assert!(g.revoked);
    assert_eq!(g.revoked_revision, Some(4));
    assert!(matches!(
        s.apply(&Request::RevokeGrant { id: "g".into() }),
        Response::Rejected {
            reason: Rejection::AlreadyRevoked { .. },
            ..
        }
    ));
    assert!(matches!(
        s.apply(&grant("h", 7)),
        Response::Rejected {
            reason: Rejection::DuplicateToken { .. },
            ..
        }
    ));
    assert!(matches!(
        s.apply(&Request::RevokeGrant { id: "nope".into() }),
        Response::Rejected {
            reason: Rejection::UnknownGrant { .. },
            ..
        }
    ));
}

#[test]
fn watch_resumes_from_any_revision_still_in_the_change_log() {
    let mut s = ConfigState::default();
    for i in 0..5 {
        put(&mut s, "p", &format!("{{\"v\":{i}}}"));
    }
    let changes = s.changes_since(2).unwrap();
    let revisions: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![3, 4, 5]);
    assert_eq!(s.changes_since(0).unwrap().len(), 5);
    assert_eq!(s.changes_since(5).unwrap(), Vec::new());
    assert!(
        s.changes_since(6).is_none(),
        "a revision from the future needs a snapshot"
    );
}

#[test]
fn revisions_older_than_the_change_log_bound_force_a_full_snapshot() {
    let mut s = ConfigState::default();
    let total = CHANGE_LOG_CAPACITY as u64 + 10;
    for i in 0..total {
        s.apply(&Request::PutUpstream {
            name: "u".into(),
            spec: serde_json::json!(i),
        });
    }
    assert_eq!(s.oldest_logged_revision(), Some(11));
    assert!(s.changes_since(9).is_none());
    let resumed = s.changes_since(10).unwrap();
    assert_eq!(resumed.len(), CHANGE_LOG_CAPACITY);
    assert_eq!(resumed.first().map(|c| c.revision), Some(11));
    assert_eq!(resumed.last().map(|c| c.revision), Some(total));
}

#[test]
fn token_hash_round_trips_as_hex() {
    let json = serde_json::to_string(&TokenHash([0xab; 32])).unwrap();
    assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
    let back: TokenHash = serde_json::from_str(&json).unwrap();
    assert_eq!(back, TokenHash([0xab; 32]));
    assert!(serde_json::from_str::<TokenHash>("\"abcd\"").is_err());
}

#[test]
fn a_put_with_an_expected_version_applies_only_over_that_serving_version() {
    let mut s = ConfigState::default();
    let first = s.apply(&put_request("p", "{\"v\":1}", Some(0)));
    assert!(matches!(
        first,
        Response::Applied {
            policy_version: Some(1),
            ..
        }
    ));
    let stale = s.apply(&put_request("p", "{\"v\":2}", Some(0)));
    assert_eq!(
        stale,
        Response::Rejected {
            revision: 1,
            reason: Rejection::VersionMismatch {
                id: "p".into(),
                expected: 0,
                actual: 1,
            },
        }
    );
    let ahead = s.apply(&put_request("p", "{\"v\":2}", Some(5)));
    assert!(matches!(
        ahead,
        Response::Rejected {
            reason: Rejection::VersionMismatch {
                expected: 5,
                actual: 1,
                ..
            },
            ..
        }
    ));
    let current = s.apply(&put_request("p", "{\"v\":2}", Some(1)));
    assert!(matches!(
        current,
        Response::Applied {
            revision: 2,
            policy_version: Some(2)
        }
    ));
    let unconditional = s.apply(&put_request("p", "{\"v\":3}", None));
    assert_eq!(unconditional.revision(), 3);
    assert_eq!(s.current_policy("p").unwrap().version, 3);
}

#[test]
fn two_puts_expecting_the_same_version_apply_once_in_log_order() {
    let mut s = ConfigState::default();
    put(&mut s, "p", "{}");
    let a = s.apply(&put_request("p", "{\"by\":\"a\"}", Some(1)));
    let b = s.apply(&put_request("p", "{\"by\":\"b\"}", Some(1)));
    assert!(matches!(a, Response::Applied { .. }));
    assert!(matches!(
        b,
        Response::Rejected {
            reason: Rejection::VersionMismatch { actual: 2, .. },
            ..
        }
    ));
    assert_eq!(s.current_policy("p").unwrap().document, "{\"by\":\"a\"}");
}

#[test]
fn a_policy_version_keeps_the_time_stamped_by_its_proposer() {
    let mut s = ConfigState::default();
    put(&mut s, "p", "{}");
    let version = s.current_policy("p").unwrap();
    assert_eq!(version.created_at_unix_ms, 1_700_000_000_000);
    assert_eq!(version.revision, 1);
}

#[test]
fn a_grant_naming_a_missing_upstream_or_policy_is_rejected_and_changes_nothing() {
    let mut s = ConfigState::default();
    put(&mut s, "p", "{}");
    assert_eq!(
        s.apply(&grant("g", 1)),
        Response::Rejected {
            revision: 1,
            reason: Rejection::UnknownUpstream {
                name: "github".into()
            },
        }
    );
    s.apply(&github());
    let Request::CreateGrant {
        id,
        label,
        token_sha256,
        server,
        created_at_unix_ms,
        ..
    } = grant("g", 1)
    else {
        unreachable!("grant() builds a CreateGrant")
    };
    let no_policy = Request::CreateGrant {
        id,
        label,
        token_sha256,
        server,
        policy_id: "missing".into(),
        created_at_unix_ms,
    };
    assert_eq!(
        s.apply(&no_policy),
        Response::Rejected {
            revision: 2,
            reason: Rejection::UnknownPolicy {
                id: "missing".into()
            },
        }
    );
    assert_eq!(s.grants().count(), 0);
    assert!(s.grant_by_token(&TokenHash([1; 32])).is_none());
    assert!(matches!(
        s.apply(&grant("g", 1)),
        Response::Applied { revision: 3, .. }
    ));
}

#[test]
fn requests_logged_before_the_new_fields_existed_still_decode() {
    let put: Request =
        serde_json::from_str(r#"{"op":"put_policy","id":"p","document":"{}"}"#).unwrap();
    assert_eq!(
        put,
        Request::PutPolicy {
            id: "p".into(),
            document: "{}".into(),
            expected_version: None,
            created_at_unix_ms: 0,
        }
    );
    let version: PolicyVersion = serde_json::from_str(
        r#"{"version":1,"revision":1,"document":"{}","rolled_back_from":null}"#,
    )
    .unwrap();
    assert_eq!(version.created_at_unix_ms, 0);
}
