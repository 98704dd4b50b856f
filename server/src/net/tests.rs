//! Tests of the connection table, the listener and the tracking layer.
use super::*;

fn config(max_connections: usize) -> NetConfig {
    NetConfig {
        max_connections,
        request_memory_bytes: 1000,
        max_request_bytes: 400,
        header_timeout: Duration::from_millis(200),
        body_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(400),
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

#[test]
fn the_automatic_cap_leaves_room_for_the_servers_files() {
    assert_eq!(auto_max_connections(Some(1024)), 768);
    assert_eq!(auto_max_connections(Some(65_536)), 57_344);
    assert_eq!(auto_max_connections(Some(100)), 16);
    assert_eq!(auto_max_connections(Some(u64::MAX)), 65_536);
    assert_eq!(auto_max_connections(None), 1024);
    let limit = descriptor_limit();
    if std::path::Path::new("/proc/self/limits").exists() {
        assert!(limit.is_some_and(|n| n > 0), "{limit:?}");
    }
}

#[test]
fn at_the_cap_the_longest_waiting_connection_is_evicted_or_the_new_one_refused() {
    let net = Net::new(config(2));
    let a = net.admit(Proto::Rest, peer()).unwrap();
    let b = net.admit(Proto::Grpc, peer()).unwrap();
    // Both just arrived: nothing has waited long enough to be evicted.
    assert!(net.admit(Proto::Rest, peer()).is_none());
    assert_eq!(net.stats().rest.refused, 1);
    // `a` has a request in flight with a body arriving; `b` idles past the grace: `b` goes.
    a.request_started();
    std::thread::sleep(EVICT_IDLE_AFTER + Duration::from_millis(20));
    let c = net.admit(Proto::Rest, peer()).unwrap();
    assert!(b.is_closed() && !a.is_closed() && !c.is_closed());
    let s = net.stats();
    assert_eq!(
        (s.grpc.evicted, s.rest.accepted, s.grpc.accepted),
        (1, 2, 1)
    );
    // `b` stays in the table (its socket is still open) but not against the cap.
    assert_eq!(s.rest.active + s.grpc.active, 3);
    net.remove(&b);
    assert_eq!(net.lock().killed, 0);
    assert_eq!(net.stats().grpc.active, 0);
}

#[test]
fn the_sweeper_closes_idle_and_half_sent_heads() {
    let net = Net::new(config(8));
    let idle = net.admit(Proto::Grpc, peer()).unwrap();
    let head = net.admit(Proto::Rest, peer()).unwrap();
    let busy = net.admit(Proto::Rest, peer()).unwrap();
    head.on_read(b"POST /v1/x HTTP/1.1\r\nHost");
    busy.on_read(b"GET / HTTP/1.1\r\n\r\n");
    busy.request_started();
    std::thread::sleep(Duration::from_millis(250));
    net.sweep_once();
    assert!(head.is_closed() && !idle.is_closed() && !busy.is_closed());
    std::thread::sleep(Duration::from_millis(200));
    net.sweep_once();
    assert!(idle.is_closed() && !busy.is_closed());
    let s = net.stats();
    assert_eq!((s.rest.timed_out_header, s.grpc.timed_out_idle), (1, 1));
}

#[test]
fn reservations_are_capped_per_request_and_released() {
    let net = Net::new(NetConfig {
        request_memory_bytes: 4000,
        ..config(8)
    });
    let r = || Reservation::new(&net);
    let (a, b, c) = (r(), r(), r());
    // 4 bytes per body byte, at most 4 x max_request_bytes (1600) per request.
    assert!(a.try_reserve(300) && a.try_reserve(300));
    assert_eq!(a.held.load(Ordering::Relaxed), 1600);
    assert!(b.try_reserve(400));
    assert!(!c.try_reserve(300)); // 3200 + 1200 > 4000
    assert!(c.try_reserve(200));
    assert_eq!(net.stats().memory_in_use, 4000);
    drop((a, b));
    assert_eq!(net.stats().memory_in_use, 800);
    drop(c);
    assert_eq!(net.stats().memory_in_use, 0);
}
