use super::{open::Listed, phase::Phase, *};

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(90),
        write_timeout: Duration::from_secs(30),
        max_connections: 1,
        max_connections_per_client: 0,
    }
}

/// A slow reader of a large response is under the write timeout, moved
/// on by each write, and cannot be closed to make room; the idle
/// timeout starts once the whole response is written.
#[test]
fn a_response_being_written_is_neither_idle_nor_evicted() {
    let phase = Phase::new(limits());
    assert_eq!(phase.deadline().unwrap().1, Dropped::HeaderTimeout);
    phase.busy();
    assert_eq!(phase.deadline(), None);
    assert!(!phase.writing());
    let (first, why) = phase.deadline().unwrap();
    assert_eq!(why, Dropped::WriteTimeout);
    std::thread::sleep(Duration::from_millis(5));
    phase.wrote();
    assert!(
        phase.deadline().unwrap().0 > first,
        "each write moves it on"
    );
    // Flushed mid-body (hyper flushes between chunks): still writing.
    phase.flushed();
    let at_cap = Dropped::MaxConnections;
    assert!(!phase.close_to_make_room(false, at_cap) && !phase.close_to_make_room(true, at_cap));
    assert_eq!(phase.deadline().unwrap().1, Dropped::WriteTimeout);
    phase.body_done();
    assert_eq!(
        phase.deadline().unwrap().1,
        Dropped::WriteTimeout,
        "not flushed yet"
    );
    phase.flushed();
    assert_eq!(phase.deadline().unwrap().1, Dropped::IdleTimeout);
    assert!(
        phase.close_to_make_room(true, at_cap),
        "idle now: room can be made"
    );
    // A pipelined request's bytes during the response: its headers are
    // timed from the end of the response.
    let phase = Phase::new(limits());
    phase.busy();
    phase.writing();
    phase.read();
    phase.body_done();
    phase.flushed();
    assert_eq!(phase.deadline().unwrap().1, Dropped::HeaderTimeout);
}

/// New TLS terms: an idle or writing connection closes after what it
/// is doing; one waiting for or answering a request answers it first,
/// with `Connection: close`.
#[test]
fn new_tls_terms_close_a_connection_only_after_its_answer() {
    let phase = Phase::new(limits());
    assert!(!phase.close_when_answered(), "no request yet");
    phase.busy();
    assert!(phase.writing(), "its response closes the connection");
    assert!(phase.close_when_answered());
    let idle = Phase::new(limits());
    idle.busy();
    assert!(!idle.writing());
    idle.body_done();
    idle.flushed();
    assert!(idle.close_when_answered());
    let busy = Phase::new(limits());
    busy.busy();
    assert!(!busy.close_when_answered());
    assert!(busy.writing());
}

/// At a client's share, room is made among that client's waiting
/// connections only, oldest first, and a client's connections are
/// counted until they end; an IPv6 client is its /64.
#[test]
fn a_client_makes_room_among_its_own_connections() {
    let open = Arc::new(Open::default());
    let (a, b) = (
        Client::of("10.0.0.1".parse().unwrap()),
        Client::of("::ffff:10.0.0.2".parse().unwrap()),
    );
    assert_eq!(b, Client::of("10.0.0.2".parse().unwrap()));
    assert_eq!(
        Client::of("2001:db8::1".parse().unwrap()),
        Client::of("2001:db8::ffff:1".parse().unwrap())
    );
    assert_ne!(
        Client::of("2001:db8::1".parse().unwrap()),
        Client::of("2001:db8:0:1::1".parse().unwrap())
    );
    let phases: Vec<(Arc<Phase>, Client)> = [b, a, a, b]
        .into_iter()
        .map(|c| (Arc::new(Phase::new(limits())), c))
        .collect();
    let listed: Vec<Listed> = phases.iter().map(|(p, c)| open.insert(p, *c)).collect();
    assert_eq!((open.count(a), open.count(b)), (2, 2));
    // a's oldest (the second connection) is closed, for a.
    phases[1].0.busy();
    assert!(open.make_room(Some(a)));
    assert_eq!(phases[1].0.deadline(), None, "busy: not closed");
    assert_eq!(
        phases[2].0.deadline().map(|d| d.1),
        Some(Dropped::MaxConnectionsPerClient)
    );
    assert_eq!((open.count(a), open.count(b)), (1, 2));
    assert!(!open.make_room(Some(a)), "a's other one is busy");
    // At the global cap: anyone's oldest waiting, b's first.
    assert!(open.make_room(None));
    assert_eq!(
        phases[0].0.deadline().map(|d| d.1),
        Some(Dropped::MaxConnections)
    );
    drop(listed);
    assert_eq!((open.count(a), open.count(b)), (0, 0));
    assert!(lock(&open.0).by_client.is_empty());
}
