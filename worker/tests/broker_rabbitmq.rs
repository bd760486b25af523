//! The broker module against a real RabbitMQ (`MULTIR_TEST_AMQP_URL`, by
//! default the local one with guest/guest). Without a broker the tests
//! print why and pass; under `CI=true` they fail.
//!
//! Every test uses its own run (queues `multir-test.<run>.*`), deleted at
//! the end, also when the test fails. Connections are cut two ways: by the
//! broker (`rabbitmqctl close_connection`, `CONNECTION_FORCED`), closing
//! only the test's own connection (found by its name), never the other
//! clients of a shared broker; and at the TCP level, through a proxy in
//! the test whose sockets are dropped (no `rabbitmqctl` needed). The second
//! kind, under a full publish window, often leaves lapin 4.12.3 stuck in
//! recovery (see `broker`'s docs); that test accepts either outcome but
//! never a hang.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use multir_worker::broker::{
    self, Broker, BrokerArgs, Outgoing, QueueCounts, RunQueues, Subscription,
};
use multir_worker::message::RUN_HEADER;
use tokio::time::timeout;

const PREFIX: &str = "multir-test";

/// A run name of its own per test and call.
fn unique_run(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn args(url: &str) -> BrokerArgs {
    BrokerArgs {
        amqp_url: url.to_string(),
        queue_prefix: PREFIX.into(),
        delivery_limit: 5,
        reconnect_attempts: 20,
        reconnect_max_delay_s: 1.0,
        recovery_timeout_s: 15.0,
    }
}

/// Deletes the run's queues when dropped, on a connection of its own, so a
/// failing test leaves nothing behind either.
struct Cleanup {
    url: String,
    queues: RunQueues,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, queues) = (self.url.clone(), self.queues.clone());
        // Drop cannot await, and may run inside the test's runtime: use a
        // thread with a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let b = Broker::connect(&args(&url), "multir-test-cleanup").await?;
                b.delete_run(&queues).await?;
                b.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("cleanup of run {}: {e}", self.queues.run);
        }
    }
}

/// A connected broker and the declared queues of a fresh run.
async fn setup(
    test: &str,
    tag: &str,
    delivery_limit: u32,
    conn_name: &str,
) -> Option<(Broker, RunQueues, Cleanup, String)> {
    let url = multir_tests::amqp_url_or_skip(test)?;
    let queues = RunQueues::new(PREFIX, &unique_run(tag)).unwrap();
    let cleanup = Cleanup {
        url: url.clone(),
        queues: queues.clone(),
    };
    let b = Broker::connect(&args(&url), conn_name).await.unwrap();
    b.declare(&queues, delivery_limit).await.unwrap();
    Some((b, queues, cleanup, url))
}

fn job(queues: &RunQueues, i: usize) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: queues.jobs.clone(),
        body: format!("{{\"scan_id\":\"s{i}\"}}").into_bytes(),
        message_id: format!("s{i}"),
        headers: vec![(RUN_HEADER.to_string(), queues.run.clone())],
    }
}

/// Waits (up to 20 s) for the counts to satisfy `ok`; returns the last.
async fn wait_counts(b: &Broker, q: &RunQueues, ok: impl Fn(&QueueCounts) -> bool) -> QueueCounts {
    let t0 = Instant::now();
    loop {
        let c = b.counts(q).await.unwrap();
        if ok(&c) || t0.elapsed() > Duration::from_secs(20) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next delivery within `secs`, panicking otherwise.
async fn next_within(sub: &mut Subscription, secs: u64, what: &str) -> lapin::message::Delivery {
    timeout(Duration::from_secs(secs), sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {secs} s"))
        .unwrap_or_else(|| panic!("{what}: consumer cancelled"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Takes and acks everything in `queue` until nothing comes for 3 s
/// (counts from passive declares are not relied on): how many times each
/// message id came.
async fn drain(b: &Broker, queue: &str) -> HashMap<String, u32> {
    let mut sub = b.consume(queue, 500, "drain").await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    while let Ok(next) = timeout(Duration::from_secs(3), sub.next()).await {
        let d = next.expect("consumer cancelled").unwrap();
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        *seen.entry(id).or_default() += 1;
        assert!(d.acker.ack(BasicAckOptions::default()).await.unwrap());
    }
    seen
}

/// Panics listing the ids `s<i>` for `i` in `ids` that `seen` lacks.
fn assert_all_seen(seen: &HashMap<String, u32>, ids: std::ops::Range<usize>) {
    let missing: Vec<String> = ids
        .map(|i| format!("s{i}"))
        .filter(|id| !seen.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed messages are not in the queue, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// `rabbitmqctl` output, or `None` when it cannot be run here.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    rabbitmqctl_checked(args).ok()
}

/// `rabbitmqctl` output, or what went wrong.
fn rabbitmqctl_checked(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether `rabbitmqctl` works here; prints why not (fails under CI).
fn rabbitmqctl_or_skip(test: &str) -> Option<()> {
    match rabbitmqctl(&["-q", "list_connections", "pid"]) {
        Some(_) => Some(()),
        None => multir_tests::skip(
            test,
            "rabbitmqctl is not available (needed to cut a connection from the broker's side)",
        ),
    }
}

/// Closes, from the broker's side, the connections whose client properties
/// name `conn_name` (like `rabbitmqctl close_all_connections`, but only
/// ours). Returns how many were closed.
fn cut_connection(conn_name: &str) -> usize {
    // The plain (tab-separated) listing: its pids are in the form that
    // close_connection takes (`<rabbit@host.N.M.0>`); the JSON one is not.
    let listing = rabbitmqctl_checked(&["-q", "list_connections", "pid", "client_properties"])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut closed = 0;
    for line in listing.lines() {
        let Some((pid, props)) = line.split_once('\t') else {
            continue;
        };
        if props.contains(conn_name) {
            if let Err(e) = rabbitmqctl_checked(&["-q", "close_connection", pid.trim(), "test-cut"])
            {
                panic!("{e}");
            }
            closed += 1;
        }
    }
    closed
}

fn conn_name(tag: &str) -> String {
    format!("multir-test-{tag}-{}", unique_run("c"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_is_idempotent_and_refuses_other_settings() {
    let test = "declare_is_idempotent_and_refuses_other_settings";
    let Some((b, q, _cleanup, _)) = setup(test, "declare", 3, &conn_name("declare")).await else {
        return;
    };
    // The same arguments again: fine, and nothing changes.
    b.declare(&q, 3)
        .await
        .expect("second declare, same settings");
    assert_eq!(b.counts(&q).await.unwrap(), QueueCounts::default());

    // Another delivery limit: refused, naming the queue and why.
    let err = b.declare(&q, 4).await.expect_err("other delivery limit");
    let text = err.to_string();
    assert!(text.contains(&q.jobs), "{text}");
    assert!(text.contains("other settings"), "{text}");
    assert!(text.contains("x-delivery-limit"), "{text}");
    // The failed declare closed only its own channel: the connection works.
    assert!(b.is_connected());
    b.declare(&q, 3).await.expect("declare after the refusal");

    // Quorum queues with the arguments we meant.
    if let Some(json) = rabbitmqctl(&[
        "-q",
        "list_queues",
        "name",
        "type",
        "arguments",
        "--formatter",
        "json",
    ]) {
        let all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let by_name: HashMap<&str, &serde_json::Value> = all
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v)))
            .collect();
        for name in [&q.jobs, &q.dead, &q.done] {
            let v = by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{name} not listed"));
            assert_eq!(v["type"], "quorum", "{name}: {v}");
        }
        let args = by_name[q.jobs.as_str()]["arguments"].to_string();
        for want in [
            "x-delivery-limit",
            "x-dead-letter-exchange",
            "at-least-once",
            "reject-publish",
            &q.dead,
            &q.dlx,
        ] {
            assert!(
                args.contains(want),
                "jobs queue arguments lack {want}: {args}"
            );
        }
    } else {
        eprintln!("{test}: rabbitmqctl not available, queue types not checked");
    }

    // Names the broker would refuse never reach it.
    assert!(RunQueues::new(PREFIX, "a/b").is_err());
    assert!(b.declare(&q, 0).await.is_err());
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_confirms_every_message() {
    let test = "publish_all_confirms_every_message";
    let Some((b, q, _cleanup, _)) = setup(test, "pub", 5, &conn_name("pub")).await else {
        return;
    };
    let p = b.publisher().await.unwrap();
    let t0 = Instant::now();
    let n = p
        .publish_all((0..2000).map(|i| Ok(job(&q, i))), 256, 5)
        .await
        .unwrap();
    eprintln!("{test}: 2000 confirmed in {:?}", t0.elapsed());
    assert_eq!(n, 2000);
    // Confirmed means enqueued: the count is exact at once.
    let c = b.counts(&q).await.unwrap();
    assert_eq!(c.jobs_ready, 2000, "{c:?}");
    assert_eq!((c.dead, c.done, c.consumers), (0, 0, 0), "{c:?}");

    // One message, and an iterator error stops publishing with that error.
    p.publish(job(&q, 2000), 3).await.unwrap();
    let items = vec![
        Ok(job(&q, 2001)),
        Err(multir_worker::Error::Invalid("bad line".into())),
    ];
    let e = p.publish_all(items.into_iter(), 8, 3).await.unwrap_err();
    assert!(e.to_string().contains("bad line"), "{e}");

    // A queue that does not exist: returned as unroutable, not "confirmed".
    let mut lost = job(&q, 0);
    lost.routing_key = format!("{}.nonexistent", q.jobs);
    let e = p.publish(lost, 3).await.unwrap_err();
    assert!(e.to_string().contains("declare the run first"), "{e}");
    let c = wait_counts(&b, &q, |c| c.jobs_ready == 2002).await;
    assert_eq!(c.jobs_ready, 2002, "{c:?}");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_nacks_and_publish_all_gives_up_after_its_attempts() {
    let test = "a_full_queue_nacks_and_publish_all_gives_up_after_its_attempts";
    let Some((b, q, _cleanup, url)) = setup(test, "full", 5, &conn_name("full")).await else {
        return;
    };
    // A quorum queue that holds one message and refuses the rest
    // (x-overflow reject-publish, as the jobs queue has, plus a length
    // limit), declared beside the run's queues.
    let full = q.done.replace(".done", ".full");
    // Deleted at the end like the run's queues (delete_run deletes it
    // three times; deleting a missing queue is fine).
    let _cleanup_full = Cleanup {
        url: url.clone(),
        queues: RunQueues {
            jobs: full.clone(),
            dead: full.clone(),
            done: full.clone(),
            ..q.clone()
        },
    };
    {
        let raw = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = raw.create_channel().await.unwrap();
        let mut a = lapin::types::FieldTable::default();
        a.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        a.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
        a.insert(
            "x-overflow".into(),
            lapin::types::AMQPValue::LongString("reject-publish".into()),
        );
        ch.queue_declare(
            full.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            a,
        )
        .await
        .unwrap();
        raw.close(200, "bye".into()).await.unwrap();
    }
    let p = b.publisher().await.unwrap();
    let mut m = job(&q, 0);
    m.routing_key = full.clone();
    // Quorum queues apply the limit once they are over it, and tell
    // publishers a moment later: some publishes beyond it still pass.
    let mut accepted = 0;
    let (e, t0) = loop {
        let t0 = Instant::now();
        match p.publish(m.clone(), 3).await {
            Ok(()) => accepted += 1,
            Err(e) => break (e, t0),
        }
        assert!(
            accepted < 20,
            "{accepted} accepted into a queue of length 1"
        );
    };
    let text = e.to_string();
    assert!(
        text.contains("nacked") && text.contains("3 attempt"),
        "{text}"
    );
    // Backed off between the attempts (0.1 s, then 0.2 s).
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    eprintln!(
        "{test}: {accepted} accepted into a queue of length 1, then: {text} ({:?})",
        t0.elapsed()
    );
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_holds_back_the_second_delivery() {
    let test = "prefetch_one_holds_back_the_second_delivery";
    let Some((b, q, _cleanup, _)) = setup(test, "prefetch", 5, &conn_name("prefetch")).await else {
        return;
    };
    let p = b.publisher().await.unwrap();
    p.publish_all((0..2).map(|i| Ok(job(&q, i))), 2, 3)
        .await
        .unwrap();
    let mut sub = b.consume(&q.jobs, 1, "w-prefetch").await.unwrap();
    let first = next_within(&mut sub, 10, "first").await;
    assert_eq!(
        first.properties.message_id().as_ref().unwrap().as_str(),
        "s0"
    );
    assert_eq!(broker::delivery_count(&first), 0);
    assert_eq!(
        broker::header(&first, RUN_HEADER).as_deref(),
        Some(q.run.as_str())
    );
    assert_eq!(
        first.properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*first.properties.delivery_mode(), Some(2));
    // Negative check: with one unacked delivery, the second one is held.
    assert!(
        timeout(Duration::from_millis(700), sub.next())
            .await
            .is_err(),
        "a second delivery arrived while the first was unacked (prefetch 1)"
    );
    let c = b.counts(&q).await.unwrap();
    assert_eq!((c.jobs_ready, c.consumers), (1, 1), "{c:?}");
    assert!(first.acker.ack(BasicAckOptions::default()).await.unwrap());
    // A second ack of the same delivery is refused locally, not sent.
    assert!(!first.acker.ack(BasicAckOptions::default()).await.unwrap());
    let second = next_within(&mut sub, 10, "second").await;
    assert_eq!(
        second.properties.message_id().as_ref().unwrap().as_str(),
        "s1"
    );
    assert!(second.acker.ack(BasicAckOptions::default()).await.unwrap());
    let c = wait_counts(&b, &q, |c| c.jobs_ready == 0).await;
    assert_eq!(c.jobs_ready, 0, "{c:?}");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_with_its_reason() {
    let test = "delivery_limit_dead_letters_with_its_reason";
    let Some((b, q, _cleanup, _)) = setup(test, "limit", 2, &conn_name("limit")).await else {
        return;
    };
    let p = b.publisher().await.unwrap();
    p.publish(job(&q, 7), 3).await.unwrap();
    let mut sub = b.consume(&q.jobs, 1, "w-limit").await.unwrap();
    let mut counts = Vec::new();
    loop {
        let Ok(Some(d)) = timeout(Duration::from_secs(3), sub.next()).await else {
            break;
        };
        let d = d.unwrap();
        assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), "s7");
        counts.push(broker::delivery_count(&d));
        assert!(
            d.acker
                .reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap()
        );
        assert!(counts.len() < 10, "never dead-lettered: {counts:?}");
    }
    // Limit 2: the first delivery and two redeliveries, then the dead queue.
    assert_eq!(counts, vec![0, 1, 2]);
    let c = wait_counts(&b, &q, |c| c.dead == 1).await;
    assert_eq!((c.jobs_ready, c.dead), (0, 1), "{c:?}");

    let mut dead = b.consume(&q.dead, 1, "collector").await.unwrap();
    let d = next_within(&mut dead, 10, "dead letter").await;
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), "s7");
    assert_eq!(d.data, job(&q, 7).body);
    assert_eq!(broker::dead_reason(&d), "delivery_limit");
    assert_eq!(
        broker::header(&d, RUN_HEADER).as_deref(),
        Some(q.run.as_str())
    );
    assert!(d.acker.ack(BasicAckOptions::default()).await.unwrap());
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_publisher_recover_after_a_cut() {
    let test = "consumer_and_publisher_recover_after_a_cut";
    let name = conn_name("cut");
    let Some((b, q, _cleanup, _)) = setup(test, "cut", 5, &name).await else {
        return;
    };
    if rabbitmqctl_or_skip(test).is_none() {
        return;
    }
    let p = b.publisher().await.unwrap();
    p.publish(job(&q, 1), 3).await.unwrap();
    let mut sub = b.consume(&q.jobs, 1, "w-cut").await.unwrap();
    let before = next_within(&mut sub, 10, "before the cut").await;
    assert!(!before.redelivered);
    assert!(b.is_connected());

    let t0 = Instant::now();
    assert_eq!(cut_connection(&name), 1, "our connection was not listed");
    let t1 = Instant::now();
    // The unacked job comes again on the recovered connection.
    let again = next_within(&mut sub, 60, "after the cut").await;
    let (recovered_in, after_ctl) = (t0.elapsed(), t1.elapsed());
    assert_eq!(
        again.properties.message_id().as_ref().unwrap().as_str(),
        "s1"
    );
    assert!(again.redelivered, "redelivery not flagged");
    assert!(b.is_connected());

    // The ack of the delivery from before the cut: lapin 4.12.3 returns
    // Ok(false) (its channel's ackers are poisoned), nothing is sent.
    let old_ack = before.acker.ack(BasicAckOptions::default()).await;
    assert!(
        matches!(old_ack, Ok(false)),
        "ack after the cut: {old_ack:?}"
    );
    eprintln!(
        "{test}: redelivered {recovered_in:?} after starting rabbitmqctl, \
         {after_ctl:?} after it returned; ack from before the cut: {old_ack:?}"
    );

    // A publish after the recovery is confirmed (confirm mode replayed).
    p.publish(job(&q, 2), 3)
        .await
        .expect("publish after recovery");
    // Prefetch is still 1: s2 waits while s1 is unacked.
    assert!(
        timeout(Duration::from_millis(700), sub.next())
            .await
            .is_err(),
        "prefetch not restored: a second delivery arrived while one was unacked"
    );
    assert!(again.acker.ack(BasicAckOptions::default()).await.unwrap());
    let third = next_within(&mut sub, 10, "after the ack").await;
    assert_eq!(
        third.properties.message_id().as_ref().unwrap().as_str(),
        "s2"
    );
    assert!(third.acker.ack(BasicAckOptions::default()).await.unwrap());
    let c = wait_counts(&b, &q, |c| c.jobs_ready == 0).await;
    assert_eq!((c.jobs_ready, c.consumers), (0, 1), "{c:?}");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_errors() {
    let test = "passwords_never_appear_in_errors";
    let secret = "s3cr3t-XYZ";
    let mut a = args(&format!("amqp:guest:{secret}@127.0.0.1:5672/%2f"));
    a.reconnect_attempts = 1;
    a.reconnect_max_delay_s = 0.2;
    // Unparseable (lapin's own parser would quote the whole URL).
    let e = Broker::connect(&a, "multir-test-secret")
        .await
        .err()
        .expect("bad URL");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    eprintln!("{test}: unparseable URL: {e}");
    // Nothing listening (port 1): refused after the attempts.
    a.amqp_url = format!("amqp://guest:{secret}@127.0.0.1:1/%2f");
    let e = Broker::connect(&a, "multir-test-secret")
        .await
        .err()
        .expect("port 1");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("guest:***@127.0.0.1:1"), "{text}");
    }
    eprintln!("{test}: refused: {e}");

    // A wrong password at a real broker.
    let Some(url) = multir_tests::amqp_url_or_skip(test) else {
        return;
    };
    let (host, port) = multir_tests::amqp_host_port(&url).unwrap();
    a.amqp_url = format!("amqp://guest:{secret}@{host}:{port}/%2f");
    let t0 = Instant::now();
    let e = timeout(
        Duration::from_secs(60),
        Broker::connect(&a, "multir-test-secret"),
    )
    .await
    .expect("wrong password: no answer within 60 s")
    .err()
    .expect("wrong password accepted");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    eprintln!("{test}: wrong password ({:?}): {e}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_survives_a_cut() {
    let test = "publish_all_survives_a_cut";
    let name = conn_name("pubcut");
    let Some((b, q, _cleanup, url)) = setup(test, "pubcut", 5, &name).await else {
        return;
    };
    if rabbitmqctl_or_skip(test).is_none() {
        return;
    }
    const N: usize = 5000;
    let p = b.publisher().await.unwrap();
    // The source is slowed down (1 ms per message) so that the cut, which
    // takes rabbitmqctl about a second, lands in the middle.
    let pulled = Arc::new(AtomicUsize::new(0));
    let source = {
        let (q, pulled) = (q.clone(), pulled.clone());
        (0..N).map(move |i| {
            std::thread::sleep(Duration::from_millis(1));
            pulled.store(i + 1, Ordering::Relaxed);
            Ok(job(&q, i))
        })
    };
    let publishing = tokio::spawn(async move { p.publish_all(source, 256, 10).await });

    // Watch from a connection of our own, and cut once some have arrived.
    let watcher = Broker::connect(&args(&url), "multir-test-watcher")
        .await
        .unwrap();
    let c = wait_counts(&watcher, &q, |c| c.jobs_ready >= 500).await;
    assert!(c.jobs_ready >= 500, "{c:?}");
    assert_eq!(cut_connection(&name), 1, "our connection was not listed");
    let pulled_at_cut = pulled.load(Ordering::Relaxed);
    assert!(
        pulled_at_cut < N,
        "the cut came after the last message ({pulled_at_cut}); slow the source down"
    );

    let n = timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publish_all did not finish within 120 s")
        .unwrap()
        .expect("publish_all across a cut");
    assert_eq!(n, N as u64);

    // Every message is in the queue at least once (duplicates are allowed:
    // a message whose confirm was lost with the connection is sent again).
    let c = watcher.counts(&q).await.unwrap();
    assert!(c.jobs_ready as usize >= N, "{c:?}");
    let seen = drain(&watcher, &q.jobs).await;
    assert_all_seen(&seen, 0..N);
    let total: u32 = seen.values().sum();
    assert!(total >= c.jobs_ready, "drained {total}, {c:?}");
    eprintln!(
        "{test}: cut after {pulled_at_cut} of {N} pulled; {total} in the queue, {} duplicates",
        total as usize - N
    );
    watcher.close().await.unwrap();
    drop(b);
}

/// A TCP proxy in front of the broker whose connections can be dropped
/// abruptly (no AMQP `Connection.Close`, as when a node or the network
/// fails); it keeps accepting, so the client can reconnect.
struct Proxy {
    port: u16,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            port,
            conns,
            accept,
        }
    }

    /// Drops every proxied connection (both sockets closed at once).
    fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_the_tcp_connection_drops() {
    let test = "recovery_after_the_tcp_connection_drops";
    let Some(url) = multir_tests::amqp_url_or_skip(test) else {
        return;
    };
    let (host, port) = multir_tests::amqp_host_port(&url).unwrap();
    let proxy = Proxy::start((host.clone(), port)).await;
    // The same URL with the proxy's port.
    let via_proxy = url.replacen(
        &format!("{host}:{port}"),
        &format!("127.0.0.1:{}", proxy.port),
        1,
    );
    assert_ne!(via_proxy, url, "URL without an explicit host:port");
    let queues = RunQueues::new(PREFIX, &unique_run("tcpcut")).unwrap();
    let _cleanup = Cleanup {
        url: url.clone(),
        queues: queues.clone(),
    };
    let b = Broker::connect(&args(&via_proxy), &conn_name("tcpcut"))
        .await
        .unwrap();
    b.declare(&queues, 5).await.unwrap();
    let p = b.publisher().await.unwrap();
    p.publish(job(&queues, 1), 3).await.unwrap();
    let mut sub = b.consume(&queues.jobs, 1, "w-tcpcut").await.unwrap();
    let before = next_within(&mut sub, 10, "before the cut").await;

    let t0 = Instant::now();
    assert_eq!(proxy.cut(), 1);
    let again = next_within(&mut sub, 60, "after the TCP cut").await;
    eprintln!("{test}: redelivered {:?} after the TCP cut", t0.elapsed());
    assert_eq!(
        again.properties.message_id().as_ref().unwrap().as_str(),
        "s1"
    );
    assert!(again.redelivered);
    let old_ack = before.acker.ack(BasicAckOptions::default()).await;
    assert!(
        matches!(old_ack, Ok(false)),
        "ack after the cut: {old_ack:?}"
    );

    assert!(again.acker.ack(BasicAckOptions::default()).await.unwrap());
    // Stop consuming (closing its channel): a consumer left running would
    // hold one of the messages below unacked, out of the drain's sight.
    drop(sub);

    // Publishing at full speed across a second cut, with a window of
    // confirms pending when it comes. lapin 4.12.3 may recover (then every
    // message is confirmed) or stall for good when the socket fails in the
    // middle of a write (then publish_all fails after the recovery
    // timeout, 15 s here, instead of hanging); the caller then starts over
    // with a new connection and publishes everything again.
    const N: usize = 5000;
    let source = |q: RunQueues, pulled: Arc<AtomicUsize>| {
        (2..N + 2).map(move |i| {
            pulled.fetch_add(1, Ordering::Relaxed);
            Ok(job(&q, i))
        })
    };
    let pulled = Arc::new(AtomicUsize::new(0));
    let publishing = {
        let src = source(queues.clone(), pulled.clone());
        tokio::spawn(async move { p.publish_all(src, 256, 10).await })
    };
    while pulled.load(Ordering::Relaxed) < N / 3 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let t0 = Instant::now();
    assert_eq!(proxy.cut(), 1);
    let pulled_at_cut = pulled.load(Ordering::Relaxed);
    assert!(pulled_at_cut < N, "cut not mid-publish: {pulled_at_cut}");
    let outcome = timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publish_all hung: neither recovered nor failed within 60 s")
        .unwrap();
    let b = match outcome {
        Ok(n) => {
            assert_eq!(n, N as u64);
            eprintln!(
                "{test}: publish_all recovered from the cut ({:?})",
                t0.elapsed()
            );
            b
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("did not recover within"), "{text}");
            eprintln!(
                "{test}: lapin stalled in recovery; publish_all failed after {:?}: {text}",
                t0.elapsed()
            );
            assert!(!b.is_connected());
            drop(b);
            // Start over: a new connection, everything published again.
            let b = Broker::connect(&args(&via_proxy), &conn_name("tcpcut2"))
                .await
                .unwrap();
            let p = b.publisher().await.unwrap();
            let src = source(queues.clone(), Arc::default());
            assert_eq!(p.publish_all(src, 256, 10).await.unwrap(), N as u64);
            b
        }
    };
    // s1 is acked; s2..s5001 are there at least once.
    let c = wait_counts(&b, &queues, |c| c.jobs_ready as usize >= N).await;
    assert!(c.jobs_ready as usize >= N, "{c:?}");
    let seen = drain(&b, &queues.jobs).await;
    assert_all_seen(&seen, 2..N + 2);
    let total: u32 = seen.values().sum();
    assert_eq!(seen.get("s1"), None, "s1 was acked");
    eprintln!(
        "{test}: cut after {pulled_at_cut} of {N} pulled; {total} in the queue \
         ({} counted before draining), {} duplicates",
        c.jobs_ready,
        total as usize - N
    );
    b.close().await.unwrap();
}
