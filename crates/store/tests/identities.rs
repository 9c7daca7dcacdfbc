use alchemiscale_model::Scope;
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::{now_micros, store_test, StoreError};

fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

store_test!(identity_lifecycle, |store| async move {
    let h = hash_key("key-1").unwrap();
    assert!(!store.add_identity(IdentityKind::User, "bill", &h, false).await.unwrap());
    assert!(!store.add_identity(IdentityKind::User, "ted", &h, false).await.unwrap());
    // independent namespaces per kind
    assert!(!store.add_identity(IdentityKind::Compute, "bill", &hash_key("other").unwrap(), false).await.unwrap());
    assert_eq!(store.list_identities(IdentityKind::User).await.unwrap(), ["bill", "ted"]);
    assert_eq!(store.list_identities(IdentityKind::Compute).await.unwrap(), ["bill"]);
    assert!(store.list_identities(IdentityKind::Admin).await.unwrap().is_empty());

    store.add_scopes(IdentityKind::User, "bill", &scopes(&["org1-campaign2-project3", "org7-*-*"])).await.unwrap();
    store.add_scopes(IdentityKind::User, "bill", &scopes(&["org7-*-*", "a-b-c"])).await.unwrap();
    assert_eq!(store.list_scopes(IdentityKind::User, "bill").await.unwrap().unwrap(), ["org1-campaign2-project3", "org7-*-*", "a-b-c"]);
    store.remove_scopes(IdentityKind::User, "bill", &scopes(&["org7-*-*", "x-y-z"])).await.unwrap();
    assert_eq!(store.list_scopes(IdentityKind::User, "bill").await.unwrap().unwrap(), ["org1-campaign2-project3", "a-b-c"]);
    assert_eq!(store.list_scopes(IdentityKind::Compute, "bill").await.unwrap().unwrap(), Vec::<String>::new());
    assert_eq!(store.list_scopes(IdentityKind::User, "nobody").await.unwrap(), None);

    // scope changes on a missing identity are errors, not silent no-ops
    let e = store.add_scopes(IdentityKind::User, "nobody", &scopes(&["a-b-c"])).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)));
    assert!(store.remove_scopes(IdentityKind::Compute, "ted", &scopes(&["a-b-c"])).await.is_err());

    // re-adding reports the overwrite; scopes kept only on request
    assert!(store.add_identity(IdentityKind::User, "bill", &hash_key("key-2").unwrap(), true).await.unwrap());
    assert_eq!(store.list_scopes(IdentityKind::User, "bill").await.unwrap().unwrap().len(), 2);
    assert!(store.add_identity(IdentityKind::User, "bill", &hash_key("key-3").unwrap(), false).await.unwrap());
    assert!(store.list_scopes(IdentityKind::User, "bill").await.unwrap().unwrap().is_empty());

    assert!(store.remove_identity(IdentityKind::User, "ted").await.unwrap());
    assert!(!store.remove_identity(IdentityKind::User, "ted").await.unwrap());
    assert_eq!(store.list_identities(IdentityKind::User).await.unwrap(), ["bill"]);
    assert!(store.add_identity(IdentityKind::User, "bad/id", &h, false).await.is_err());
});

store_test!(authentication, |store| async move {
    store.add_identity(IdentityKind::User, "alice", &hash_key("right").unwrap(), false).await.unwrap();
    store.add_scopes(IdentityKind::User, "alice", &scopes(&["a-b-*"])).await.unwrap();
    let ok = store.authenticate(IdentityKind::User, "alice", "right").await.unwrap().unwrap();
    assert_eq!(ok.scopes, ["a-b-*"]);
    assert!(store.authenticate(IdentityKind::User, "alice", "wrong").await.unwrap().is_none());
    assert!(store.authenticate(IdentityKind::Compute, "alice", "right").await.unwrap().is_none());
    assert!(store.authenticate(IdentityKind::User, "nobody", "right").await.unwrap().is_none());
    assert!(store.authenticate(IdentityKind::User, "alice", &"x".repeat(5000)).await.unwrap().is_none());

    store.set_identity_status(IdentityKind::User, "alice", true, None).await.unwrap();
    assert!(store.authenticate(IdentityKind::User, "alice", "right").await.unwrap().is_none());
    store.set_identity_status(IdentityKind::User, "alice", false, Some(now_micros() - 1)).await.unwrap();
    assert!(store.authenticate(IdentityKind::User, "alice", "right").await.unwrap().is_none());
    store.set_identity_status(IdentityKind::User, "alice", false, Some(now_micros() + 60_000_000)).await.unwrap();
    assert!(store.authenticate(IdentityKind::User, "alice", "right").await.unwrap().is_some());

    // an upstream bcrypt hash still logs in
    let upstream = bcrypt::hash("upstream-key", 4).unwrap();
    store.add_identity(IdentityKind::Compute, "migrated", &upstream, false).await.unwrap();
    assert!(store.authenticate(IdentityKind::Compute, "migrated", "upstream-key").await.unwrap().is_some());
});
