//! The store against a real S3-compatible server (s3s-fs on loopback, see
//! `multir_tests::S3Server`): round trips, listings over several pages,
//! size limits, both checksum modes, and the errors the worker acts on
//! (missing objects, refused credentials, a server that is down).

use std::time::Instant;

use multir_tests::S3Server;
use multir_worker::Error;
use multir_worker::store::{Checksums, Credentials, S3Url, Store, StoreArgs};

const BUCKET: &str = "scans";

fn args(server: &S3Server) -> StoreArgs {
    StoreArgs {
        attempts: 1,
        timeout_s: 20.0,
        ..StoreArgs::for_endpoint(&server.endpoint())
    }
}

fn credentials(access_key: &str, secret_key: &str) -> Credentials {
    Credentials::new(access_key, secret_key, None, None, "multir-test")
}

async fn store_with(server: &S3Server, args: &StoreArgs) -> Store {
    let creds = credentials(&server.access_key, &server.secret_key);
    Store::connect_with(args, Some(creds)).await.unwrap()
}

/// A server, a store signed with its keys, and the bucket created.
async fn setup(test: &str) -> Option<(S3Server, Store)> {
    let server = S3Server::start(test)?;
    let store = store_with(&server, &args(&server)).await;
    store.ensure_bucket(BUCKET).await.unwrap();
    Some((server, store))
}

fn url(key: &str) -> S3Url {
    S3Url::parse(&format!("s3://{BUCKET}/{key}")).unwrap()
}

/// Bytes that differ from position to position (a shifted copy would not
/// compare equal).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn store_error(err: Error) -> (String, String, bool) {
    match err {
        Error::Store {
            url,
            message,
            transient,
        } => (url, message, transient),
        other => panic!("expected a store error, got {other:?}"),
    }
}

#[tokio::test]
async fn put_get_exists_delete_round_trip() {
    let Some((_server, store)) = setup("put_get_exists_delete_round_trip").await else {
        return;
    };
    // Creating the bucket again is no error.
    store.ensure_bucket(BUCKET).await.unwrap();

    let key = url("run1/fragments/0001.json");
    let body = pattern(70_000);
    store
        .put(&key, body.clone(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(store.get(&key, 70_000).await.unwrap(), body);
    assert!(store.exists(&key).await.unwrap());
    assert!(
        !store
            .exists(&url("run1/fragments/0002.json"))
            .await
            .unwrap()
    );

    // A second PUT replaces the object whole.
    store
        .put(&key, b"{}".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(store.get(&key, 70_000).await.unwrap(), b"{}");

    store.delete(&key).await.unwrap();
    assert!(!store.exists(&key).await.unwrap());
    // Deleting what is gone is no error.
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn missing_objects_and_buckets_are_permanent_errors_naming_the_url() {
    let Some((_server, store)) = setup("missing_objects_and_buckets").await else {
        return;
    };
    let err = store
        .get(&url("no/such.nii.gz"), 1 << 20)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.to_string(), "s3://scans/no/such.nii.gz: no such object");

    // s3s-fs answers a GET in a missing bucket with NoSuchKey (AWS says
    // NoSuchBucket); either way it is permanent and names the URL.
    let elsewhere = S3Url::parse("s3://no-such-bucket/a.nii.gz").unwrap();
    let err = store.get(&elsewhere, 1 << 20).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string()
            .starts_with("s3://no-such-bucket/a.nii.gz: no such "),
        "{err}"
    );

    let folder = S3Url::parse("s3://no-such-bucket/run1").unwrap();
    let err = store.list(&folder).await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.to_string(), "s3://no-such-bucket/run1: no such bucket");
}

#[tokio::test]
async fn objects_over_the_limit_are_refused_from_their_length() {
    let Some((_server, store)) = setup("objects_over_the_limit").await else {
        return;
    };
    let key = url("big.nii.gz");
    let body = pattern(1 << 20);
    store
        .put(&key, body.clone(), "application/gzip")
        .await
        .unwrap();
    match store.get(&key, 1000).await {
        // The exact size can only come from Content-Length: the guard on
        // the body would stop at the first chunk past 1000 bytes.
        Err(Error::TooLarge { url, size, limit }) => {
            assert_eq!(
                (url.as_str(), size, limit),
                ("s3://scans/big.nii.gz", 1 << 20, 1000)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // At the limit it is read whole.
    assert_eq!(store.get(&key, 1 << 20).await.unwrap(), body);
}

#[tokio::test]
async fn list_follows_every_page_and_keeps_to_the_folder() {
    let Some((_server, store)) = setup("list_follows_every_page").await else {
        return;
    };
    // 1,100 keys: more than one page of ListObjectsV2 (1,000 at most).
    const N: usize = 1100;
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..N {
        let store = store.clone();
        uploads.spawn(async move {
            let key = url(&format!("run1/masks/{i:05}.nii.gz"));
            store.put(&key, vec![i as u8], "application/gzip").await
        });
        // At most 32 uploads in flight.
        if uploads.len() >= 32 {
            uploads.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(done) = uploads.join_next().await {
        done.unwrap().unwrap();
    }
    eprintln!("{N} uploads in {:.1} s", started.elapsed().as_secs_f64());
    // Neighbours that a bare string prefix would also match.
    for decoy in ["run10/masks/00000.nii.gz", "run1.csv"] {
        store.put(&url(decoy), vec![0], "text/plain").await.unwrap();
    }

    let want: Vec<String> = (0..N).map(|i| format!("masks/{i:05}.nii.gz")).collect();
    assert_eq!(store.list(&url("run1")).await.unwrap(), want);
    assert_eq!(store.list(&url("run1/")).await.unwrap(), want);
    let masks = store.list(&url("run1/masks")).await.unwrap();
    assert_eq!(masks.len(), N);
    assert_eq!(masks[N - 1], format!("{:05}.nii.gz", N - 1));
    let bucket = S3Url::parse("s3://scans").unwrap();
    assert_eq!(store.list(&bucket).await.unwrap().len(), N + 2);
    assert!(store.list(&url("run2")).await.unwrap().is_empty());
}

#[tokio::test]
async fn put_file_uploads_a_local_file() {
    let Some((_server, store)) = setup("put_file_uploads_a_local_file").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mask.nii.gz");
    let body = pattern(300_000);
    std::fs::write(&path, &body).unwrap();
    let key = url("run1/masks/a.nii.gz");
    store.put_file(&key, &path).await.unwrap();
    assert_eq!(store.get(&key, 1 << 20).await.unwrap(), body);

    let missing = dir.path().join("missing.nii.gz");
    match store.put_file(&key, &missing).await {
        Err(Error::Io(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("missing.nii.gz") && text.contains("s3://scans/run1/masks/a.nii.gz"),
                "{text}"
            );
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[tokio::test]
async fn both_checksum_modes_work_against_the_server() {
    let Some((server, _)) = setup("both_checksum_modes").await else {
        return;
    };
    for checksums in [Checksums::WhenSupported, Checksums::WhenRequired] {
        let store = store_with(
            &server,
            &StoreArgs {
                checksums,
                ..args(&server)
            },
        )
        .await;
        let key = url(&format!("checksums/{checksums:?}"));
        let body = pattern(200_000);
        store
            .put(&key, body.clone(), "application/octet-stream")
            .await
            .unwrap_or_else(|e| panic!("{checksums:?}: {e}"));
        assert_eq!(
            store.get(&key, 1 << 20).await.unwrap(),
            body,
            "{checksums:?}"
        );
        let path = server.root().join("upload.bin");
        std::fs::write(&path, &body).unwrap();
        store.put_file(&key, &path).await.unwrap();
        assert_eq!(
            store.get(&key, 1 << 20).await.unwrap(),
            body,
            "{checksums:?}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_permanent_error_without_the_secret() {
    let Some((server, _)) = setup("wrong_credentials").await else {
        return;
    };
    let wrong_secret = "not-the-secret-0123456789abcdef";
    let store = Store::connect_with(
        &args(&server),
        Some(credentials(&server.access_key, wrong_secret)),
    )
    .await
    .unwrap();
    let key = url("run1/x.json");
    for err in [
        store
            .put(&key, b"{}".to_vec(), "application/json")
            .await
            .unwrap_err(),
        store.get(&key, 1000).await.unwrap_err(),
    ] {
        let text = err.to_string();
        let (url, message, transient) = store_error(err);
        assert!(!transient, "{text}");
        assert_eq!(url, "s3://scans/run1/x.json");
        assert!(message.starts_with("access denied (HTTP 403"), "{text}");
        assert!(message.contains("credentials"), "{text}");
        assert!(!text.contains(wrong_secret), "{text}");
        assert!(!text.contains(&server.secret_key), "{text}");
    }
}

#[tokio::test]
async fn a_stopped_server_is_a_transient_error_naming_the_url_and_endpoint() {
    let Some((mut server, _)) = setup("a_stopped_server").await else {
        return;
    };
    // Two attempts: the first may go out on the pooled connection that the
    // server's death cut (hyper: "connection closed before message
    // completed"); the retry then finds the port closed.
    let store = store_with(
        &server,
        &StoreArgs {
            attempts: 2,
            ..args(&server)
        },
    )
    .await;
    let key = url("run1/x.json");
    store
        .put(&key, b"{\"a\":1}".to_vec(), "application/json")
        .await
        .unwrap();
    server.stop();
    let err = store.get(&key, 1000).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "s3://scans/run1/x.json: connection refused (is the endpoint {} up?)",
            server.endpoint()
        )
    );
    let err = store.exists(&key).await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    // The same client works again once the server is back (same port and
    // folder), and the object is still there.
    server.restart();
    assert_eq!(store.get(&key, 1000).await.unwrap(), b"{\"a\":1}");
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused() {
    let base = StoreArgs::for_endpoint("http://127.0.0.1:9");
    for bad in [
        StoreArgs {
            attempts: 0,
            ..base.clone()
        },
        StoreArgs {
            timeout_s: 0.0,
            ..base.clone()
        },
        StoreArgs {
            timeout_s: f64::NAN,
            ..base.clone()
        },
    ] {
        match Store::connect_with(&bad, Some(credentials("a", "b"))).await {
            Err(Error::Invalid(_)) => {}
            other => panic!("{bad:?}: expected Invalid, got {other:?}"),
        }
    }
}
