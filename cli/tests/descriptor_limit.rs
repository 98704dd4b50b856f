//! Issue 21's checks that run the `chamfer` binary (this package's, `CARGO_BIN_EXE_chamfer`: cargo builds it
//! before these tests, so they cannot skip):
//!
//! * 2000 slow connections against `chamfer serve` under a 1024-descriptor limit: new REST and gRPC clients
//!   are still served, every slow connection is closed within the configured timeout, no accept fails;
//! * `chamfer serve` with `CHAMFER_API_KEY=` (set, empty) refuses to start with a clear message.
//!
//! The rest of items 3 and 4 (in process, with small limits) is in `slow_clients.rs`.
use std::time::{Duration, Instant};

use chamfer_proto::v1 as pb;
use chamfer_tests::http::Http;
use chamfer_tests::raw::{metric, sent};
use pb::collections_client::CollectionsClient;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Slack on top of a timeout before the test calls it missed.
const SLACK: Duration = Duration::from_secs(4);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes the connection (end of file, or a reset), for at most `limit`: how long it
/// took; Err(()) when it is still open.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Result<Duration, ()> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return Err(()),
        }
    }
}

/// The check: `chamfer serve` under a 1024-descriptor limit (automatic cap: 768), 2000 slow
/// connections (half-sent REST heads and bare HTTP/2 prefaces): new REST and gRPC clients are still served,
/// and every slow connection is closed within the configured timeout (3 s) plus slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_connections_against_1024_descriptors() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chamfer"));
    const SLOW: usize = 2000;
    let own = chamfer_server::net::descriptor_limit().unwrap_or(u64::MAX);
    assert!(
        own >= SLOW as u64 + 300,
        "this test opens {SLOW} connections: raise the descriptor limit (ulimit -n) above {}",
        SLOW + 300
    );
    let dir = tempfile::tempdir().unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, grpc) = (port(), port());
    let timeout = Duration::from_secs(3);
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(&bin)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--http-addr",
            &http.to_string(),
            "--grpc-addr",
            &grpc.to_string(),
        ])
        .env_remove("CHAMFER_API_KEY")
        .env("CHAMFER_HEADER_READ_TIMEOUT_MS", "3000")
        .env("CHAMFER_BODY_READ_TIMEOUT_MS", "3000")
        .env("CHAMFER_IDLE_TIMEOUT_MS", "3000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = Http::new(http, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(http)).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "chamfer serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .ok(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "c", "dimension": 4})),
        )
        .await;
    let m = client.raw("GET", "/metrics", b"", None).await.1;
    let m = String::from_utf8(m).unwrap();
    assert_eq!(
        metric(&m, "chamfer_connections_max"),
        768,
        "the automatic cap"
    );
    drop(client);

    // The slow connections, opened as fast as possible (the server's backlog queues some).
    let opened = Instant::now();
    let slow: Vec<_> = (0..SLOW)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = if i % 2 == 0 {
                    sent(
                        http,
                        b"GET /v1/collections HTTP/1.1\r\nHost: x\r\nX-Slow: a",
                    )
                    .await
                } else {
                    sent(grpc, H2_PREFACE).await
                };
                until_closed(&mut s, timeout + SLACK * 3).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // New clients, while the slow ones are open: served (retrying a refusal at once, as a load balancer
    // would), and how long it took.
    let start = Instant::now();
    let served = loop {
        let (status, v) = Http::new(http, None)
            .call("GET", "/v1/collections", None)
            .await;
        if status == 200 {
            assert_eq!(v["collections"][0]["name"], "c");
            break start.elapsed();
        }
        assert_eq!(status, 503, "{v}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "REST never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let start = Instant::now();
    let grpc_served = loop {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await;
        if let Ok(ch) = channel {
            if CollectionsClient::new(ch)
                .list(pb::ListCollectionsRequest {})
                .await
                .is_ok()
            {
                break start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gRPC never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut latest = Duration::ZERO;
    for t in slow {
        let took = t.await.unwrap().expect("a slow connection stayed open");
        latest = latest.max(took);
    }
    eprintln!(
        "{SLOW} slow connections opened in {:?}; a new REST client served after {served:?}, a gRPC client \
         after {grpc_served:?}; the last slow connection closed {latest:?} after it was opened",
        opened.elapsed()
    );
    assert!(latest <= timeout + SLACK, "closed after {latest:?}");
    let client = Http::new(http, None);
    let m = String::from_utf8(client.raw("GET", "/metrics", b"", None).await.1).unwrap();
    let sum = |name: &str| {
        metric(&m, &format!("{name}{{protocol=\"rest\"}}"))
            + metric(&m, &format!("{name}{{protocol=\"grpc\"}}"))
    };
    assert_eq!(sum("chamfer_connection_accept_errors_total"), 0, "{m}");
    assert!(sum("chamfer_connections_accepted_total") >= 768, "{m}");
    assert!(child.try_wait().unwrap().is_none(), "the server exited");
    child.kill().await.unwrap();
}

// ----- an empty API key -----------------------------------------------------------------------------------

/// `CHAMFER_API_KEY=` (set, empty) is refused at start-up with a clear message, not read as "no key".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chamfer_serve_refuses_an_empty_api_key() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chamfer"));
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&bin)
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .env("CHAMFER_API_KEY", "")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chamfer serve with an empty key must exit, not serve")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("api_key is empty"), "{err}");
}
