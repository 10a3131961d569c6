use super::*;

const NOW: u64 = 1_800_000_000;

fn claims() -> SessionClaims {
    SessionClaims {
        server: "github".into(),
        grant: "6f1c2d9e-8b47-4a3e-9d2f-3b8e5a7c1f04".into(),
        upstream_session: Some("0b9f7a7e-4c1d-4e8a-b0a5-9c2e6d3f8a11".into()),
        protocol_version: "2025-11-25".into(),
        issued_at: NOW,
        expires_at: NOW + 3600,
        node: None,
        local_id: None,
    }
}

fn sealer(keys: &[(&str, u8)]) -> SessionSealer {
    SessionSealer::new(
        keys.iter()
            .map(|(id, b)| ((*id).to_owned(), [*b; 32]))
            .collect(),
    )
    .unwrap()
}

#[test]
fn sealed_claims_open_to_the_same_claims() {
    let s = sealer(&[("k1", 1)]);
    let id = s.seal(&claims());
    assert_eq!(s.open(&id, NOW).unwrap(), claims());
    let local = SessionClaims {
        upstream_session: None,
        node: Some("gw-2".into()),
        local_id: Some(42),
        ..claims()
    };
    assert_eq!(s.open(&s.seal(&local), NOW + 1).unwrap(), local);
}

#[test]
fn ids_are_visible_ascii_well_under_three_hundred_bytes_and_never_repeat() {
    let s = sealer(&[("k1", 1)]);
    let a = s.seal(&claims());
    let b = s.seal(&claims());
    assert_ne!(a, b, "random nonce");
    assert!(a.starts_with("v1.k1."));
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)),
        "{a}"
    );
    assert!(a.len() < 300, "{} bytes", a.len());
    assert!(http::HeaderValue::from_str(&a).is_ok());
}

#[test]
fn an_id_sealed_with_an_old_key_opens_while_that_key_is_listed() {
    let old = sealer(&[("old", 1)]);
    let id = old.seal(&claims());
    let rotated = sealer(&[("new", 2), ("old", 1)]);
    assert_eq!(rotated.current_key_id(), "new");
    assert_eq!(rotated.open(&id, NOW).unwrap(), claims());
    assert!(rotated.seal(&claims()).starts_with("v1.new."));
}

#[test]
fn an_id_sealed_with_a_removed_key_no_longer_opens() {
    let id = sealer(&[("old", 1)]).seal(&claims());
    let after = sealer(&[("new", 2)]);
    assert_eq!(
        after.open(&id, NOW),
        Err(SessionError::UnknownKey("old".into()))
    );
}

#[test]
fn a_ciphertext_moved_under_another_key_id_fails_authentication() {
    // Same key bytes under two ids: the key id is bound as associated data.
    let s = sealer(&[("a", 7), ("b", 7)]);
    let id = s.seal(&claims());
    let moved = id.replacen("v1.a.", "v1.b.", 1);
    assert_eq!(s.open(&moved, NOW), Err(SessionError::Tampered));
}

#[test]
fn flipping_any_byte_of_an_id_makes_it_fail() {
    let s = sealer(&[("k1", 1)]);
    let id = s.seal(&claims());
    for i in 0..id.len() {
        for flip in [0x01u8, 0x20, 0x04] {
            let mut bytes = id.clone().into_bytes();
            bytes[i] ^= flip;
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            assert!(
                s.open(&text, NOW).is_err(),
                "byte {i} ^ {flip:#x} still opened"
            );
        }
    }
}

#[test]
fn tampering_with_the_payload_is_reported_as_such() {
    let s = sealer(&[("k1", 1)]);
    let id = s.seal(&claims());
    let (head, payload) = id.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(payload).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
    assert_eq!(s.open(&forged, NOW), Err(SessionError::Tampered));
}

#[test]
fn an_id_sealed_by_another_deployment_fails_authentication() {
    let id = sealer(&[("k1", 1)]).seal(&claims());
    assert_eq!(
        sealer(&[("k1", 9)]).open(&id, NOW),
        Err(SessionError::Tampered)
    );
}

#[test]
fn an_expired_id_is_refused_from_its_expiry_instant_on() {
    let s = sealer(&[("k1", 1)]);
    let id = s.seal(&claims());
    assert!(s.open(&id, NOW + 3599).is_ok());
    assert_eq!(
        s.open(&id, NOW + 3600),
        Err(SessionError::Expired {
            expires_at: NOW + 3600
        })
    );
}

#[test]
fn malformed_ids_get_distinct_errors() {
    let s = sealer(&[("k1", 1)]);
    for id in [
        "",
        "v1",
        "v1.k1",
        "v2.k1.AAAA",
        "v1..AAAA",
        "v1.k!1.AAAA",
        &"v".repeat(5000),
    ] {
        assert_eq!(s.open(id, NOW), Err(SessionError::Malformed), "{id:?}");
    }
    assert_eq!(
        s.open("v1.k1.not*base64", NOW),
        Err(SessionError::BadEncoding)
    );
    assert_eq!(s.open("v1.k1.AAAA", NOW), Err(SessionError::BadEncoding));
    assert_eq!(
        s.open("v1.zz.AAAA", NOW),
        Err(SessionError::UnknownKey("zz".into()))
    );
}

#[test]
fn key_configuration_is_validated() {
    assert_eq!(
        SessionSealer::new(vec![]).unwrap_err(),
        SessionError::NoKeys
    );
    for bad in ["", "has.dot", "x".repeat(17).as_str(), "sp ace"] {
        assert_eq!(
            SessionSealer::new(vec![(bad.to_owned(), [0; 32])]).unwrap_err(),
            SessionError::InvalidKeyId(bad.to_owned())
        );
    }
    assert_eq!(
        SessionSealer::new(vec![("a".into(), [0; 32]), ("a".into(), [1; 32])]).unwrap_err(),
        SessionError::DuplicateKeyId("a".into())
    );
}

#[test]
fn debug_output_shows_key_ids_but_not_keys() {
    let s = sealer(&[("k1", 0xAB)]);
    let text = format!("{s:?}");
    assert!(text.contains("k1"));
    assert!(!text.to_lowercase().contains("ab, "), "{text}");
    assert!(!text.contains("171"), "{text}");
}
