//! The `jimbot.ResourceCoordinator` service through the real binary, called as
//! a legacy client would: grants, partial grants, denials, release, expiry,
//! status, the status stream and the health check.

mod harness;

use harness::Jimbus;
use jimbus_proto::coordinator::resource_coordinator_client::ResourceCoordinatorClient;
use jimbus_proto::coordinator::{self as pb, RequestStatus, ResourceType};
use tonic::transport::Channel;

async fn client(server: &Jimbus) -> ResourceCoordinatorClient<Channel> {
    ResourceCoordinatorClient::connect(server.grpc_url()).await.expect("connects")
}

fn ask(id: &str, resource: ResourceType, quantity: i32) -> pb::ResourceRequest {
    pb::ResourceRequest {
        request_id: id.into(),
        component: "trainer-1".into(),
        resource: resource as i32,
        quantity,
        priority: pb::Priority::Normal as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_grants_denies_releases_and_reports() {
    let server = Jimbus::start(&["--resource-pools", "gpu=2,claude_api=10,memory=268435456,cpu=4"]);
    let mut rc = client(&server).await;

    let gpu = rc.request_resource(ask("g1", ResourceType::Gpu, 2)).await.unwrap().into_inner();
    assert_eq!(gpu.status, RequestStatus::Granted as i32);
    assert_eq!((gpu.request_id.as_str(), gpu.granted_quantity), ("g1", 2));
    assert!(!gpu.token.is_empty() && gpu.granted_at.is_some());

    let denied = rc.request_resource(ask("g2", ResourceType::Gpu, 1)).await.unwrap().into_inner();
    assert_eq!(denied.status, RequestStatus::Denied as i32);
    assert!(denied.message.contains("0 free"), "{}", denied.message);

    let mut partial = ask("m1", ResourceType::Memory, 512);
    partial.allow_partial = true;
    let memory = rc.request_resource(partial).await.unwrap().into_inner();
    assert_eq!((memory.status, memory.granted_bytes), (RequestStatus::Granted as i32, 256 << 20));

    let status = rc.get_resource_status(pb::ResourceStatusRequest { resource: ResourceType::Gpu as i32 }).await;
    let gpu_status = &status.unwrap().into_inner().statuses[0];
    assert_eq!((gpu_status.total_capacity, gpu_status.allocated, gpu_status.available), (2, 2, 0));
    assert_eq!(gpu_status.allocations[0].component, "trainer-1");

    let release = pb::ReleaseRequest { request_id: "g1".into(), token: gpu.token, component: "trainer-1".into() };
    assert!(rc.release_resource(release.clone()).await.unwrap().into_inner().success);
    assert!(!rc.release_resource(release).await.unwrap().into_inner().success, "released once");
    let again = rc.request_resource(ask("g3", ResourceType::Gpu, 1)).await.unwrap().into_inner();
    assert_eq!(again.status, RequestStatus::Granted as i32, "the released GPUs are free again");

    let health = rc.health_check(pb::HealthCheckRequest {}).await.unwrap().into_inner();
    assert!(health.healthy);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_expire_and_the_status_stream_shows_it() {
    let server = Jimbus::start(&["--resource-pools", "claude_api=1"]);
    let mut rc = client(&server).await;
    let mut short = ask("a1", ResourceType::ClaudeApi, 1);
    short.duration = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    let grant = rc.request_resource(short).await.unwrap().into_inner();
    assert_eq!(grant.status, RequestStatus::Granted as i32);
    assert!(grant.expires_at.is_some());

    let request = pb::ResourceStatusRequest { resource: ResourceType::ClaudeApi as i32 };
    let mut stream = rc.stream_resource_status(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first report at once");
    assert_eq!(first.allocated, 1);
    // Reports keep coming; the grant's lifetime ends within a few of them.
    let mut freed = false;
    for _ in 0..10 {
        let report = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .expect("reports keep coming")
            .unwrap()
            .expect("the stream stays open");
        if report.allocated == 0 && report.available == 1 {
            freed = true;
            break;
        }
    }
    assert!(freed, "the one-second grant expired");
    let next = rc.request_resource(ask("a2", ResourceType::ClaudeApi, 1)).await.unwrap().into_inner();
    assert_eq!(next.status, RequestStatus::Granted as i32);
}

#[test]
fn a_malformed_pool_spec_is_one_line_and_exit_code_two() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jimbus"))
        .args(["serve", "--resource-pools", "gpu=lots"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resource-pools") && stderr.contains("gpu=lots"), "{stderr}");
}

/// Polls `/metrics` until it shows `line` (a lease and a fallback take seconds by design).
fn wait_for_metric(server: &Jimbus, line: &str) {
    harness::wait_for(std::time::Duration::from_secs(40), &format!("{line:?} in /metrics"), || {
        String::from_utf8(server.get("/metrics").body).unwrap().lines().any(|l| l == line)
    });
}

/// Posts `body` as a careful client does: headers with `Expect: 100-continue`
/// first, the body only once the server asks for it.
fn post_expecting(server: &Jimbus, body: &[u8]) -> u16 {
    let mut conn = harness::HttpConn::open(server.http);
    let head = format!(
        "POST /api/v1/events/batch HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes());
    let first = conn.read_response();
    if first.status != 100 {
        return first.status;
    }
    conn.send(body);
    conn.read_response().status
}

fn event_of_size(len: usize) -> Vec<u8> {
    let mut body = br#"{"type":"HEARTBEAT","payload":{"pad":""#.to_vec();
    body.resize(len - 3, b'p');
    body.extend_from_slice(br#""}}"#);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_coordinator_sets_the_budget_and_when_it_is_gone_the_local_one_returns() {
    let mut coordinator = Jimbus::start(&["--resource-pools", "memory=40000000"]);
    let url = coordinator.grpc_url();
    // Each of the two shards' aggregators holds 16 MiB of whatever the budget
    // is, and a request is granted six bytes per body byte.
    let server = Jimbus::start(&["--shards", "2", "--resource-coordinator", &url, "--memory-budget", "80000000"]);
    wait_for_metric(&server, "jimbus_budget_limit_bytes 40000000");
    // Four events of 1.75 MB: one event may encode to at most 2 MiB.
    let quarter = String::from_utf8(event_of_size(1_750_000)).unwrap();
    let big = format!(r#"{{"events":[{quarter},{quarter},{quarter},{quarter}]}}"#).into_bytes();
    assert_eq!(post_expecting(&server, &big), 503, "over what the lease leaves free");
    assert_eq!(server.post("/api/v1/events", &event_of_size(1_000)).status, 200);

    coordinator.kill9();
    wait_for_metric(&server, "jimbus_budget_limit_bytes 80000000");
    assert_eq!(post_expecting(&server, &big), 200, "the local budget is back");
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(metrics.contains("jimbus_coordinator_fallbacks_total"), "{metrics}");
}
