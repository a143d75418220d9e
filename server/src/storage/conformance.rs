//! The backend conformance suite: what every `Storage` must do, runnable against any backend
//! (SQLite in unit tests, DynamoDB against the local emulator). Each check works under its own
//! random prefix, so the suite can share a table with other data.

use std::sync::Arc;

use super::{Entry, Op, Precondition, Storage, StorageError, MAX_TRANSACTION_OPS, MAX_VALUE_BYTES};

pub async fn run_all(storage: Arc<dyn Storage>) {
    get_put_delete(&*storage, &fresh_prefix()).await;
    versions_and_preconditions(&*storage, &fresh_prefix()).await;
    listing(&*storage, &fresh_prefix()).await;
    transactions_are_atomic(&*storage, &fresh_prefix()).await;
    invalid_requests_are_refused(&*storage, &fresh_prefix()).await;
    racing_writers_have_one_winner(storage.clone(), &fresh_prefix()).await;
}

fn fresh_prefix() -> String {
    format!("conformance/{}/", uuid::Uuid::new_v4())
}

async fn get_put_delete(s: &dyn Storage, p: &str) {
    let key = format!("{p}a");
    assert_eq!(
        s.get(&key).await.unwrap(),
        None,
        "missing key reads as None"
    );
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    s.put(&key, binary.clone(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(Entry {
            value: binary,
            version: 1
        }),
        "binary values round-trip"
    );
    let odd_key = format!("{p}with space/日本/ü");
    s.put(&odd_key, b"x".to_vec(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(s.get(&odd_key).await.unwrap().unwrap().value, b"x");
    s.delete(&key).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None, "deleted key is gone");
    s.delete(&key).await.unwrap();
    let big = vec![7u8; MAX_VALUE_BYTES];
    s.put(&key, big.clone(), Precondition::None).await.unwrap();
    assert_eq!(
        s.get(&key).await.unwrap().unwrap().value.len(),
        MAX_VALUE_BYTES,
        "values up to the limit are kept"
    );
}

async fn versions_and_preconditions(s: &dyn Storage, p: &str) {
    let key = format!("{p}cas");
    s.put(&key, b"1".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        s.put(&key, b"x".to_vec(), Precondition::Absent).await,
        Err(StorageError::Conflict { key: key.clone() }),
        "Absent fails when the key exists"
    );
    s.put(&key, b"2".to_vec(), Precondition::Version(1))
        .await
        .unwrap();
    assert_eq!(
        s.get(&key).await.unwrap().unwrap(),
        Entry {
            value: b"2".to_vec(),
            version: 2
        }
    );
    assert_eq!(
        s.put(&key, b"x".to_vec(), Precondition::Version(1)).await,
        Err(StorageError::Conflict { key: key.clone() }),
        "stale version fails"
    );
    assert_eq!(
        s.get(&key).await.unwrap().unwrap().value,
        b"2",
        "failed write changed nothing"
    );
    s.put(&key, b"3".to_vec(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(
        s.get(&key).await.unwrap().unwrap().version,
        3,
        "unconditional put still counts"
    );
    let missing = format!("{p}missing");
    assert!(matches!(
        s.put(&missing, b"x".to_vec(), Precondition::Version(1))
            .await,
        Err(StorageError::Conflict { .. })
    ));
    assert!(matches!(
        s.transact(vec![Op::Delete {
            key: key.clone(),
            precondition: Precondition::Version(2)
        }])
        .await,
        Err(StorageError::Conflict { .. })
    ));
    s.transact(vec![Op::Delete {
        key: key.clone(),
        precondition: Precondition::Version(3),
    }])
    .await
    .unwrap();
    s.put(&key, b"again".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    let recreated = s.get(&key).await.unwrap().unwrap().version;
    assert!(
        recreated > 3,
        "a re-created key goes on past its last version (3), got {recreated}: versions never repeat"
    );
    // ABA: a version read before the delete must not match the re-created key.
    let aba = format!("{p}aba");
    s.put(&aba, b"1".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    let read = s.get(&aba).await.unwrap().unwrap().version;
    s.delete(&aba).await.unwrap();
    s.put(&aba, b"2".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    assert!(matches!(
        s.put(&aba, b"3".to_vec(), Precondition::Version(read))
            .await,
        Err(StorageError::Conflict { .. })
    ));
    assert_eq!(s.get(&aba).await.unwrap().unwrap().value, b"2".to_vec());
    assert_eq!(
        s.list(p)
            .await
            .unwrap()
            .iter()
            .filter(|k| *k == "gone")
            .count(),
        0
    );
    let gone = format!("{p}gone");
    s.put(&gone, b"x".to_vec(), Precondition::None)
        .await
        .unwrap();
    s.delete(&gone).await.unwrap();
    assert!(
        !s.list(p).await.unwrap().contains(&"gone".to_owned()),
        "a deleted key is not listed"
    );
    assert_eq!(s.get(&gone).await.unwrap(), None);
    assert!(matches!(
        s.put(&gone, b"y".to_vec(), Precondition::Version(1)).await,
        Err(StorageError::Conflict { .. })
    ));

    // A check writes nothing and fails the whole transaction when it does not hold.
    let checked = format!("{p}checked");
    let other = format!("{p}other");
    s.put(&checked, b"c".to_vec(), Precondition::Absent)
        .await
        .unwrap();
    let version = s.get(&checked).await.unwrap().unwrap().version;
    assert!(matches!(
        s.transact(vec![
            Op::Check {
                key: checked.clone(),
                precondition: Precondition::Version(version + 1),
            },
            Op::Put {
                key: other.clone(),
                value: b"o".to_vec(),
                precondition: Precondition::None,
            },
        ])
        .await,
        Err(StorageError::Conflict { .. })
    ));
    assert_eq!(s.get(&other).await.unwrap(), None, "nothing applied");
    s.transact(vec![
        Op::Check {
            key: checked.clone(),
            precondition: Precondition::Version(version),
        },
        Op::Check {
            key: format!("{p}never"),
            precondition: Precondition::Absent,
        },
        Op::Put {
            key: other.clone(),
            value: b"o".to_vec(),
            precondition: Precondition::None,
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(&other).await.unwrap().unwrap().value, b"o".to_vec());
    assert_eq!(
        s.get(&checked).await.unwrap().unwrap().version,
        version,
        "a check does not bump the version"
    );
    assert!(matches!(
        s.transact(vec![Op::Check {
            key: checked.clone(),
            precondition: Precondition::None,
        }])
        .await,
        Err(StorageError::Invalid(_))
    ));
}

async fn listing(s: &dyn Storage, p: &str) {
    assert!(
        s.list(p).await.unwrap().is_empty(),
        "empty prefix lists nothing"
    );
    for key in ["b", "a", "folder/x", "folder/y/z", "a/deep", "c"] {
        s.put(&format!("{p}{key}"), b"v".to_vec(), Precondition::None)
            .await
            .unwrap();
    }
    assert_eq!(
        s.list(p).await.unwrap(),
        vec!["a", "a/", "b", "c", "folder/"]
    );
    assert_eq!(
        s.list(&format!("{p}folder/")).await.unwrap(),
        vec!["x", "y/"]
    );
    assert_eq!(s.list(&format!("{p}fold")).await.unwrap(), vec!["er/"]);
    assert!(s.list(&format!("{p}nothing/")).await.unwrap().is_empty());
    // '.' sorts before '/' and '0' after it: a sub-folder sits between its neighbours.
    for key in ["x.y", "x/1", "x/2/3", "x/4", "x0", "y", "z//w"] {
        s.put(&format!("{p}edge/{key}"), b"v".to_vec(), Precondition::None)
            .await
            .unwrap();
    }
    assert_eq!(
        s.list(&format!("{p}edge/")).await.unwrap(),
        vec!["x.y", "x/", "x0", "y", "z/"]
    );
    assert_eq!(s.list(&format!("{p}edge/z/")).await.unwrap(), vec!["/"]);
    let many = format!("{p}many/");
    for i in 0..150 {
        s.put(&format!("{many}k{i:03}"), b"v".to_vec(), Precondition::None)
            .await
            .unwrap();
    }
    let listed = s.list(&many).await.unwrap();
    assert_eq!(listed.len(), 150, "listing is complete beyond one page");
    assert_eq!(listed[0], "k000");
    assert_eq!(listed[149], "k149");
}

async fn transactions_are_atomic(s: &dyn Storage, p: &str) {
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    s.put(&c, b"old".to_vec(), Precondition::None)
        .await
        .unwrap();
    s.transact(vec![
        Op::Put {
            key: a.clone(),
            value: b"1".to_vec(),
            precondition: Precondition::Absent,
        },
        Op::Put {
            key: b.clone(),
            value: b"2".to_vec(),
            precondition: Precondition::Absent,
        },
        Op::Delete {
            key: c.clone(),
            precondition: Precondition::Version(1),
        },
    ])
    .await
    .unwrap();
    assert!(s.get(&a).await.unwrap().is_some() && s.get(&b).await.unwrap().is_some());
    assert!(s.get(&c).await.unwrap().is_none());

    let result = s
        .transact(vec![
            Op::Put {
                key: c.clone(),
                value: b"new".to_vec(),
                precondition: Precondition::Absent,
            },
            Op::Delete {
                key: a.clone(),
                precondition: Precondition::None,
            },
            Op::Put {
                key: b.clone(),
                value: b"x".to_vec(),
                precondition: Precondition::Version(7),
            },
        ])
        .await;
    assert!(
        matches!(result, Err(StorageError::Conflict { .. })),
        "one failed precondition fails all"
    );
    assert!(
        s.get(&c).await.unwrap().is_none(),
        "no op of a failed transaction is applied"
    );
    assert!(s.get(&a).await.unwrap().is_some());
    assert_eq!(s.get(&b).await.unwrap().unwrap().value, b"2");

    let full: Vec<Op> = (0..MAX_TRANSACTION_OPS)
        .map(|i| Op::Put {
            key: format!("{p}full/{i}"),
            value: vec![1],
            precondition: Precondition::Absent,
        })
        .collect();
    s.transact(full).await.unwrap();
    assert_eq!(
        s.list(&format!("{p}full/")).await.unwrap().len(),
        MAX_TRANSACTION_OPS
    );
}

async fn invalid_requests_are_refused(s: &dyn Storage, p: &str) {
    let key = format!("{p}big");
    let too_big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        s.put(&key, too_big, Precondition::None).await,
        Err(StorageError::TooLarge { .. })
    ));
    assert!(
        s.get(&key).await.unwrap().is_none(),
        "oversized value is refused before the write"
    );
    let too_many: Vec<Op> = (0..=MAX_TRANSACTION_OPS)
        .map(|i| Op::Put {
            key: format!("{p}x{i}"),
            value: vec![1],
            precondition: Precondition::None,
        })
        .collect();
    assert!(matches!(
        s.transact(too_many).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(
        s.list(p).await.unwrap().is_empty(),
        "refused transaction wrote nothing"
    );
    assert!(
        matches!(
            s.put(&format!("{p}folder/"), vec![1], Precondition::None)
                .await,
            Err(StorageError::Invalid(_))
        ),
        "a key ending in '/' would be a folder in listings"
    );
    let twice = vec![
        Op::Put {
            key: format!("{p}d"),
            value: vec![1],
            precondition: Precondition::None,
        },
        Op::Delete {
            key: format!("{p}d"),
            precondition: Precondition::None,
        },
    ];
    assert!(matches!(
        s.transact(twice).await,
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        s.transact(vec![]).await,
        Err(StorageError::Invalid(_))
    ));
}

async fn racing_writers_have_one_winner(s: Arc<dyn Storage>, p: &str) {
    let key = format!("{p}race");
    s.put(&key, b"0".to_vec(), Precondition::None)
        .await
        .unwrap();
    for round in 1..=5u64 {
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let (s, key) = (s.clone(), key.clone());
                tokio::spawn(async move {
                    s.put(
                        &key,
                        format!("{round}-{writer}").into_bytes(),
                        Precondition::Version(round),
                    )
                    .await
                })
            })
            .collect();
        let mut winners = 0;
        for handle in writers {
            match handle.await.unwrap() {
                Ok(()) => winners += 1,
                Err(StorageError::Conflict { .. }) => {}
                Err(other) => panic!("racing write failed with {other}"),
            }
        }
        assert_eq!(
            winners, 1,
            "round {round}: exactly one conditional write wins"
        );
        assert_eq!(s.get(&key).await.unwrap().unwrap().version, round + 1);
    }
}
