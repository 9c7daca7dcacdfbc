mod common;

use std::io::{Read, Write};

use alchemiscale_model::synthetic::network_chain_json;
use alchemiscale_model::{NetworkState, Scope};
use alchemiscale_store::dump::verify_dump;
use alchemiscale_store::identities::{hash_key, IdentityKind};
use alchemiscale_store::testing::{self, TestStore};
use alchemiscale_store::{store_test, Store, StoreError};
use common::*;

async fn populate(store: &Store) {
    let chain = chain_of(&vector_text("network.keyed_chain.json"));
    store.create_network(&chain, &"vecorg-veccampaign-vecproject".parse().unwrap(), NetworkState::Active).await.unwrap();
    let s: Scope = "o-c-p".parse().unwrap();
    store.create_network(&chain_of(&network_chain_json(5, 8, "dump")), &s, NetworkState::Inactive).await.unwrap();
    store.add_identity(IdentityKind::User, "bill", &hash_key("k").unwrap(), false).await.unwrap();
    store.add_scopes(IdentityKind::User, "bill", &["o-c-p".parse().unwrap(), "a-*-*".parse().unwrap()]).await.unwrap();
}

fn decompress(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap().read_to_end(&mut out).unwrap();
    out
}

store_test!(dump_load_dump_is_identical, |store| async move {
    populate(&store).await;
    // a console layout (derived data) is kept out of dumps
    let s: Scope = "o-c-p".parse().unwrap();
    let net = store.query_networks(std::slice::from_ref(&s), None, None).await.unwrap().remove(0);
    let net_id = store.console_network_structure(&net).await.unwrap().unwrap().id;
    store.put_console_layout(net_id, "[[1,2.0,3.0]]").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.dump");
    let stats = store.dump_file(&first).await.unwrap();
    assert!(stats.rows > 50);
    assert_eq!(verify_dump(&first).unwrap(), stats);
    assert!(!String::from_utf8(decompress(&first)).unwrap().contains("console_layout"));

    // a non-empty store refuses the load unless forced; a forced load drops the layouts
    let e = store.load_file(&first, false).await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    store.load_file(&first, true).await.unwrap();
    assert_eq!(store.console_layout(net_id).await.unwrap(), None);
    assert_eq!(store.console_networks_without_layout(10).await.unwrap().len(), 2, "both networks to lay out again");
    let second = dir.path().join("second.dump");
    store.dump_file(&second).await.unwrap();
    assert_eq!(decompress(&first), decompress(&second));

    // into a fresh store of the same backend
    let fresh = testing::sqlite().await;
    fresh.store.load_file(&first, false).await.unwrap();
    let third = dir.path().join("third.dump");
    fresh.store.dump_file(&third).await.unwrap();
    assert_eq!(decompress(&first), decompress(&third));
    // loaded data is usable: identities authenticate and networks read back
    assert!(fresh.store.authenticate(IdentityKind::User, "bill", "k").await.unwrap().is_some());
    let net = "AlchemicalNetwork-c5a12a2d9a941dbfe56b76c3387ccf6d-vecorg-veccampaign-vecproject".to_string().parse().unwrap();
    assert_eq!(fresh.store.get_chain(&net).await.unwrap(), vector_text("network.keyed_chain.json"));
});

store_test!(corrupt_dumps_are_refused_and_change_nothing, |store| async move {
    populate(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.dump");
    store.dump_file(&good).await.unwrap();
    let plain = decompress(&good);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        let mut enc = zstd::Encoder::new(std::fs::File::create(&p).unwrap(), 3).unwrap();
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
        p
    };
    // truncated (trailer missing), altered byte, wrong format, raw garbage, missing file
    let cut = plain.len() - 40;
    let mut altered = plain.clone();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'a' { b'b' } else { b'a' };
    let cases = [
        write("truncated.dump", &plain[..cut]),
        write("altered.dump", &altered),
        write("other.dump", b"{\"format\": \"something-else\"}\n"),
        write("empty.dump", b""),
    ];
    let garbage = dir.path().join("garbage.dump");
    std::fs::write(&garbage, b"not zstd at all").unwrap();
    let half = dir.path().join("half.dump");
    let raw = std::fs::read(&good).unwrap();
    std::fs::write(&half, &raw[..raw.len() / 2]).unwrap();

    let target = testing::sqlite().await;
    for p in cases.iter().chain([&garbage, &half, &dir.path().join("missing.dump")]) {
        let e = target.store.load_file(p, false).await.unwrap_err();
        assert!(matches!(e, StoreError::Dump(_)), "{}: {e}", p.display());
        assert!(target.store.is_empty().await.unwrap(), "{}", p.display());
        // and the populated store survives a forced load of a bad file
        assert!(store.load_file(p, true).await.is_err());
    }
    let again = dir.path().join("again.dump");
    store.dump_file(&again).await.unwrap();
    assert_eq!(decompress(&good), decompress(&again));
});

/// SQLite → PostgreSQL → SQLite gives the same dump bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_move_between_backends() {
    let Some(pg) = testing::postgres().await else { return };
    let lite = testing::sqlite().await;
    populate(&lite.store).await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.dump");
    lite.store.dump_file(&a).await.unwrap();
    pg.store.load_file(&a, false).await.unwrap();
    let b = dir.path().join("b.dump");
    pg.store.dump_file(&b).await.unwrap();
    assert_eq!(decompress(&a), decompress(&b));
    let back: TestStore = testing::sqlite().await;
    back.store.load_file(&b, false).await.unwrap();
    let c = dir.path().join("c.dump");
    back.store.dump_file(&c).await.unwrap();
    assert_eq!(decompress(&a), decompress(&c));
    // identity sequences continue after the loaded ids on PostgreSQL
    pg.store.add_identity(IdentityKind::User, "newcomer", &hash_key("k").unwrap(), false).await.unwrap();
}

/// A dump taken while writes continue is a consistent snapshot and loads cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_while_writing() {
    let lite = testing::sqlite().await;
    let store = lite.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..30 {
            let s: Scope = format!("o{i}-c-p").parse().unwrap();
            store.create_network(&chain_of(&network_chain_json(4, 6, &format!("w{i}"))), &s, NetworkState::Active).await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 0..5 {
        let p = dir.path().join(format!("{i}.dump"));
        lite.store.dump_file(&p).await.unwrap();
        paths.push(p);
    }
    writer.await.unwrap();
    for p in paths {
        let target = testing::sqlite().await;
        target.store.load_file(&p, false).await.unwrap();
    }
}

// A dump written before the task status log (schema version 3: no `task_status_log`
// section) loads, with the log empty; versions before it are refused before anything is
// written.
store_test!(dumps_of_schema_version_3_load, |store| async move {
    use sha2::Digest;
    populate(&store).await;
    let s: Scope = "o-c-p".parse().unwrap();
    let net = store.query_networks(std::slice::from_ref(&s), None, None).await.unwrap().remove(0);
    let tf = store.network_transformations(&net).await.unwrap().remove(0);
    let req = alchemiscale_store::tasks::TaskRequest { transformation: tf, extends: None };
    let task = store.create_tasks(&[req], Some("bill")).await.unwrap().remove(0);
    store.set_task_status(&[Some(task.clone())], alchemiscale_model::TaskStatus::Invalid, true).await.unwrap();
    assert_eq!(store.table_counts().await.unwrap().into_iter().find(|(t, _)| *t == "task_status_log").unwrap().1, 1);
    let dir = tempfile::tempdir().unwrap();
    let v4 = dir.path().join("v4.dump");
    store.dump_file(&v4).await.unwrap();

    // the same dump as version 3 wrote it: header 3, no status-log section, trailer redone
    let write_as = |name: &str, version: i64| {
        let text = String::from_utf8(decompress(&v4)).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.pop(); // the trailer
        let header = lines[0].replace("\"schema_version\":4", &format!("\"schema_version\":{version}"));
        assert_ne!(header, lines[0], "the header names schema version 4: {}", lines[0]);
        let start = lines.iter().position(|l| l.contains("\"table\":\"task_status_log\"")).expect("a status-log section");
        let log_rows = lines.len() - start - 1; // the last section
        lines.truncate(start);
        let mut body = format!("{header}\n");
        for l in &lines[1..] {
            body.push_str(l);
            body.push('\n');
        }
        let rows: usize = lines.iter().filter(|l| l.starts_with('[')).count();
        let tables = lines.iter().filter(|l| l.starts_with('{') && l.contains("\"table\":")).count();
        assert_eq!(log_rows, 1);
        let sha = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        body.push_str(&format!("{{\"end\":true,\"rows\":{rows},\"sha256\":\"{sha}\",\"tables\":{tables}}}\n"));
        let p = dir.path().join(name);
        let mut enc = zstd::Encoder::new(std::fs::File::create(&p).unwrap(), 3).unwrap();
        enc.write_all(body.as_bytes()).unwrap();
        enc.finish().unwrap();
        p
    };
    let v3 = write_as("v3.dump", 3);
    verify_dump(&v3).unwrap();
    let fresh = testing::sqlite().await;
    fresh.store.load_file(&v3, false).await.unwrap();
    let counts: std::collections::HashMap<_, _> = fresh.store.table_counts().await.unwrap().into_iter().collect();
    assert_eq!(counts["task_status_log"], 0);
    assert_eq!(counts["task"], 1);
    assert!(fresh.store.authenticate(IdentityKind::User, "bill", "k").await.unwrap().is_some());

    let v2 = write_as("v2.dump", 2);
    let e = fresh.store.load_file(&v2, true).await.unwrap_err().to_string();
    assert!(e.contains("schema version 2"), "{e}");
    assert_eq!(fresh.store.table_counts().await.unwrap().into_iter().find(|(t, _)| *t == "task").unwrap().1, 1, "nothing changed");
});
