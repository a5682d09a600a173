//! The machine tested on the commands it emits, one scenario per test, in a cluster of
//! `a`, `b` and `c` (or `a` and `b`) where `a` led term 1.

use super::*;
use crate::config::Role;
use Command::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn id(term: u64, index: u64) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

fn config(node: &str, peers: &[&str], lease: bool) -> NodeConfig {
    let peers = peers.iter().map(|p| p.to_string()).collect();
    NodeConfig { node: node.into(), peers, lease, switchover_timeout: TIMEOUT }
}

/// Steps `node`, checking that a `Persist` comes first and only then.
fn step(node: &mut Node, event: Event) -> Vec<Command> {
    let commands = node.step(event);
    for (i, command) in commands.iter().enumerate() {
        assert!(!matches!(command, Persist(_)) || i == 0, "Persist at {i} in {commands:?}");
    }
    commands
}

fn hard(term: u64, role: RoleKind, granted: Option<(u64, &str)>) -> HardState {
    let granted = granted.map(|(term, node)| Grant { term: Term(term), node: node.into() });
    HardState { term: Term(term), role, granted }
}

/// `b`, following `a` at term 1, its log through 1.10, all applied.
fn follower_b(peers: &[&str]) -> Node {
    let mut b = Node::new(config("b", peers, false), HardState::initial(Role::Follower));
    let start = step(&mut b, Event::Start { last: Some(id(1, 10)), applied: Some(Index(10)) });
    assert_eq!(start, [MakeReadOnly, ServeRelay { leader: None }, Follow { leader: None, term: Term(1) }]);
    let accepted = step(&mut b, Event::LeaderAccepted { node: "a".into(), term: Term(1) });
    assert_eq!(accepted, [ServeRelay { leader: Some(("a".into(), Term(1))) }]);
    b
}

/// `a`, leading term 1 with its log through 1.20, `b` and `c` connected (the lease held if on).
fn leader_a(lease: bool) -> Node {
    let mut a = Node::new(config("a", &["b", "c"], lease), HardState::initial(Role::Leader));
    step(&mut a, Event::Start { last: Some(id(1, 20)), applied: None });
    let resumed = step(&mut a, Event::ProbesAnswered(vec![follower("b", 1, id(1, 20)), follower("c", 1, id(1, 18))]));
    assert_eq!(
        resumed,
        [StartLeading { term: Term(1), first_index: None }, ServeRelay { leader: leader("a", 1) }, MakeWritable]
    );
    assert_eq!(a.leading(), Some(Term(1)));
    for node in ["b", "c"] {
        step(&mut a, Event::FollowerAcked { node: node.into(), flushed: Some(Index(15)), applied: Some(Index(15)) });
    }
    a
}

fn leader(node: &str, term: u64) -> Option<(NodeId, Term)> {
    Some((node.into(), Term(term)))
}

fn answer(node: &str, term: u64, role: RoleKind, last: EntryId, leader: Option<&str>) -> PeerAnswer {
    let state = PeerState { term: Term(term), role, last: Some(last), leader: leader.map(Into::into) };
    PeerAnswer { node: node.into(), state: Some(state) }
}

fn follower(node: &str, term: u64, last: EntryId) -> PeerAnswer {
    answer(node, term, RoleKind::Follower, last, None)
}

fn unreachable(node: &str) -> PeerAnswer {
    PeerAnswer { node: node.into(), state: None }
}

fn vote(node: &str, vote: Vote) -> ClaimAnswer {
    ClaimAnswer { node: node.into(), vote }
}

fn claim(candidate: &str, term: u64, last: EntryId, force: bool) -> Event {
    Event::ClaimReceived(Claim { candidate: candidate.into(), term: Term(term), last: Some(last), force })
}

fn promote_answer(commands: &[Command]) -> &Result<Promoted, PromoteRefused> {
    match commands.last() {
        Some(Answer { response: Response::Promote(result), .. }) => result,
        other => panic!("no promote answer last: {other:?}"),
    }
}

/// `b` probes and finds `a` dead and `c` behind it; returns the claim's commands.
fn claim_after_probe(b: &mut Node, force: bool) -> Vec<Command> {
    assert_eq!(step(b, Event::PromoteRequested { id: 7, force }), [ProbePeers]);
    step(b, Event::ProbesAnswered(vec![unreachable("a"), follower("c", 1, id(1, 8))]))
}

#[test]
fn a_promotion_claims_the_next_term_then_leads_after_its_log() {
    let mut b = follower_b(&["a", "c"]);
    let claimed = claim_after_probe(&mut b, false);
    let claim = Claim { candidate: "b".into(), term: Term(2), last: Some(id(1, 10)), force: false };
    let persisted = hard(2, RoleKind::Follower, Some((2, "b")));
    assert_eq!(claimed, [Persist(persisted), StopFollowing, ClaimTerm(claim)]);

    let led = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Unreachable), vote("c", Vote::Granted)]));
    let promoted = Promoted { term: Term(2), first_index: Index(11), lost: vec![], unsafe_no_majority: false };
    let expected = [
        Persist(hard(2, RoleKind::Leader, Some((2, "b")))),
        StartLeading { term: Term(2), first_index: Some(Index(11)) },
        ServeRelay { leader: leader("b", 2) },
        MakeWritable,
        Answer { id: 7, response: Response::Promote(Ok(promoted)) },
    ];
    assert_eq!(led, expected);
    assert_eq!(b.leading(), Some(Term(2)));
}

#[test]
fn a_promotion_replays_its_log_before_it_leads() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::LogAppended { last: id(1, 14) });
    claim_after_probe(&mut b, false);
    let granted = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Unreachable), vote("c", Vote::Granted)]));
    assert_eq!(granted, [ReplayThrough { index: Index(14) }]);
    assert_eq!(step(&mut b, Event::ReplayCaughtUp { applied: Index(12) }), []);
    let led = step(&mut b, Event::ReplayCaughtUp { applied: Index(14) });
    assert_eq!(led[1], StartLeading { term: Term(2), first_index: Some(Index(15)) });
    assert!(promote_answer(&led).is_ok());
}

#[test]
fn a_peer_ahead_refuses_the_promotion_with_409_naming_it_and_disturbs_nobody() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let answers = vec![unreachable("a"), follower("c", 1, id(1, 12))];
    let refused = step(&mut b, Event::ProbesAnswered(answers));
    let expected = PromoteRefused::PeerAhead { node: "c".into(), last: id(1, 12) };
    assert_eq!(refused, [Answer { id: 7, response: Response::Promote(Err(expected.clone())) }]);
    assert_eq!(expected.http_status(), 409);
    assert_eq!(b.role(), &NodeRole::Follower { leader: Some("a".into()), term: Term(1) });
    assert_eq!(b.hard_state(), &HardState::initial(Role::Follower));
}

#[test]
fn a_live_leader_refuses_the_promotion_directly_or_through_a_follower() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let answers = vec![answer("a", 1, RoleKind::Leader, id(1, 10), None), follower("c", 1, id(1, 9))];
    let refused = step(&mut b, Event::ProbesAnswered(answers));
    let alive = PromoteRefused::LeaderAlive { node: "a".into(), term: Term(1), seen_by: "a".into() };
    assert_eq!(promote_answer(&refused), &Err(alive));

    step(&mut b, Event::PromoteRequested { id: 8, force: false });
    let answers = vec![unreachable("a"), answer("c", 1, RoleKind::Follower, id(1, 9), Some("a"))];
    let refused = step(&mut b, Event::ProbesAnswered(answers));
    let alive = PromoteRefused::LeaderAlive { node: "a".into(), term: Term(1), seen_by: "c".into() };
    assert_eq!(refused, [Answer { id: 8, response: Response::Promote(Err(alive)) }]);
}

#[test]
fn force_overrides_the_probe_and_says_what_is_lost() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: true });
    let answers = vec![answer("a", 1, RoleKind::Leader, id(1, 13), None), follower("c", 1, id(1, 12))];
    let claimed = step(&mut b, Event::ProbesAnswered(answers));
    assert!(matches!(&claimed[2], ClaimTerm(Claim { term: Term(2), force: true, .. })));
    let led = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Granted), vote("c", Vote::Granted)]));
    let promoted = promote_answer(&led).as_ref().unwrap();
    assert_eq!(promoted.lost, [("a".into(), id(1, 13)), ("c".into(), id(1, 12))]);
    assert!(!promoted.unsafe_no_majority);
}

#[test]
fn without_a_majority_the_promotion_is_refused_before_any_claim() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let refused = step(&mut b, Event::ProbesAnswered(vec![unreachable("a"), unreachable("c")]));
    let expected = PromoteRefused::NoMajority { reached: 1, needed: 2 };
    assert_eq!(refused, [Answer { id: 7, response: Response::Promote(Err(expected)) }]);
    assert_eq!(b.hard_state().term, Term(1));
}

#[test]
fn a_claim_without_a_majority_is_refused_and_leaves_a_follower_of_the_new_term() {
    let mut b = follower_b(&["a", "c"]);
    claim_after_probe(&mut b, false);
    let refusal = Vote::Refused { term: Term(2), last: Some(id(1, 8)) };
    let refused = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Unreachable), vote("c", refusal)]));
    let expected = PromoteRefused::NoMajority { reached: 1, needed: 2 };
    assert_eq!(
        refused,
        [Answer { id: 7, response: Response::Promote(Err(expected)) }, Follow { leader: None, term: Term(2) }]
    );
    assert_eq!(b.role(), &NodeRole::Follower { leader: None, term: Term(2) });
}

#[test]
fn a_forced_promotion_without_a_majority_leads_and_says_it_is_unsafe() {
    // Two nodes, the leader dead: the only way to promote.
    let mut b = follower_b(&["a"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: true });
    let claimed = step(&mut b, Event::ProbesAnswered(vec![unreachable("a")]));
    assert_eq!(claimed[0], Persist(hard(2, RoleKind::Follower, Some((2, "b")))));
    let led = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Unreachable)]));
    assert!(promote_answer(&led).as_ref().unwrap().unsafe_no_majority);
    assert_eq!(b.leading(), Some(Term(2)));

    // The same cluster with the lease on: forcing cannot stand in for a majority.
    let mut b = follower_b(&["a"]);
    b.config.lease = true;
    step(&mut b, Event::PromoteRequested { id: 7, force: true });
    step(&mut b, Event::ProbesAnswered(vec![unreachable("a")]));
    let refused = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Unreachable)]));
    assert_eq!(promote_answer(&refused[..1]), &Err(PromoteRefused::LeaseRequired { reached: 1, needed: 2 }));
    assert_eq!(b.leading(), None);
}

#[test]
fn a_follower_adopts_a_higher_term_durably_before_following_it() {
    let mut b = follower_b(&["a", "c"]);
    let adopted = step(&mut b, Event::HigherTermSeen { term: Term(3), leader: Some("c".into()) });
    let expected = [
        Persist(hard(3, RoleKind::Follower, None)),
        ServeRelay { leader: leader("c", 3) },
        Follow { leader: Some("c".into()), term: Term(3) },
    ];
    assert_eq!(adopted, expected);
    // A leader of a higher term than the one followed is adopted on connection, durably first.
    let accepted = step(&mut b, Event::LeaderAccepted { node: "c".into(), term: Term(4) });
    assert_eq!(accepted, [Persist(hard(4, RoleKind::Follower, None)), ServeRelay { leader: leader("c", 4) }]);
}

#[test]
fn an_older_term_is_never_followed() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::HigherTermSeen { term: Term(3), leader: None });
    assert_eq!(step(&mut b, Event::HigherTermSeen { term: Term(2), leader: Some("a".into()) }), []);
    assert_eq!(step(&mut b, Event::LeaderAccepted { node: "a".into(), term: Term(2) }), []);
    assert_eq!(b.role(), &NodeRole::Follower { leader: None, term: Term(3) });
    // A switchover's request from an older term is ignored too.
    assert_eq!(step(&mut b, Event::HandoverReceived { from: "a".into(), term: Term(2) }), []);
}

#[test]
fn a_claim_is_granted_once_per_term_persisted_before_the_answer() {
    let mut b = follower_b(&["a", "c"]);
    let granted = step(&mut b, claim("c", 2, id(1, 10), false));
    let expected = [
        Persist(hard(2, RoleKind::Follower, Some((2, "c")))),
        ServeRelay { leader: None },
        Follow { leader: None, term: Term(2) },
        AnswerClaim { candidate: "c".into(), term: Term(2), vote: Vote::Granted },
    ];
    assert_eq!(granted, expected);
    let refusal = Vote::Refused { term: Term(2), last: Some(id(1, 10)) };
    assert_eq!(
        step(&mut b, claim("a", 2, id(1, 10), true)),
        [AnswerClaim { candidate: "a".into(), term: Term(2), vote: refusal }]
    );
    // The same candidate asking again (its answer was lost) is granted again, with no change.
    let again = step(&mut b, claim("c", 2, id(1, 10), false));
    assert_eq!(again, [AnswerClaim { candidate: "c".into(), term: Term(2), vote: Vote::Granted }]);
}

#[test]
fn a_term_adopted_without_a_grant_can_still_be_granted_once() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::HigherTermSeen { term: Term(2), leader: None });
    let granted = step(&mut b, claim("c", 2, id(1, 10), false));
    assert_eq!(granted[0], Persist(hard(2, RoleKind::Follower, Some((2, "c")))));
    assert_eq!(granted.last(), Some(&AnswerClaim { candidate: "c".into(), term: Term(2), vote: Vote::Granted }));
    // A leader never grants the term it leads.
    let mut a = leader_a(false);
    let refused = step(&mut a, claim("b", 1, id(1, 20), false));
    assert!(matches!(&refused[..], [AnswerClaim { vote: Vote::Refused { .. }, .. }]));
}

#[test]
fn a_candidate_behind_is_refused_unless_forced() {
    let mut b = follower_b(&["a", "c"]);
    let refused = step(&mut b, claim("c", 2, id(1, 9), false));
    assert!(matches!(&refused[..], [AnswerClaim { vote: Vote::Refused { .. }, .. }]));
    let granted = step(&mut b, claim("c", 2, id(1, 9), true));
    assert_eq!(granted.last(), Some(&AnswerClaim { candidate: "c".into(), term: Term(2), vote: Vote::Granted }));
}

#[test]
fn a_leader_granting_a_claim_fences_itself_before_it_answers() {
    let mut a = leader_a(false);
    let granted = step(&mut a, claim("b", 2, id(1, 20), false));
    let expected = [
        Persist(hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, Some((2, "b")))),
        MakeReadOnly,
        StopLeading,
        ServeRelay { leader: None },
        Follow { leader: None, term: Term(2) },
        AnswerClaim { candidate: "b".into(), term: Term(2), vote: Vote::Granted },
    ];
    assert_eq!(granted, expected);
}

#[test]
fn a_leader_seeing_a_higher_term_fences_itself_then_finds_whether_it_diverged() {
    let mut a = leader_a(false);
    let fenced = step(&mut a, Event::HigherTermSeen { term: Term(2), leader: Some("b".into()) });
    let expected = [
        Persist(hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, None)),
        MakeReadOnly,
        StopLeading,
        ServeRelay { leader: leader("b", 2) },
        Follow { leader: Some("b".into()), term: Term(2) },
    ];
    assert_eq!(fenced, expected);
    assert_eq!(step(&mut a, Event::PromoteRequested { id: 3, force: false }), [ProbePeers]);
    step(&mut a, Event::ProbesAnswered(vec![answer("b", 2, RoleKind::Leader, id(2, 30), None), unreachable("c")]));
    let diverged = step(&mut a, Event::DivergenceFound { branch_point: Index(17) });
    let divergent = RoleKind::Divergent { branch_point: Index(17) };
    assert_eq!(
        diverged,
        [Persist(hard(2, divergent, None)), StopFollowing, WriteDivergenceReport { after: Index(17) }]
    );
    let refused = step(&mut a, Event::PromoteRequested { id: 4, force: true });
    assert_eq!(promote_answer(&refused), &Err(PromoteRefused::Divergent { branch_point: Index(17) }));
    // On restart, the report is written again (the file is the same).
    let mut again = Node::new(a.config.clone(), a.hard_state().clone());
    let started = step(&mut again, Event::Start { last: Some(id(1, 20)), applied: None });
    assert_eq!(started.last(), Some(&WriteDivergenceReport { after: Index(17) }));
}

#[test]
fn a_superseded_leader_whose_log_is_a_prefix_becomes_a_follower() {
    let mut a = leader_a(false);
    step(&mut a, Event::HigherTermSeen { term: Term(2), leader: Some("b".into()) });
    let accepted = step(&mut a, Event::LeaderAccepted { node: "b".into(), term: Term(2) });
    assert_eq!(accepted, [Persist(hard(2, RoleKind::Follower, None)), ServeRelay { leader: leader("b", 2) }]);
}

#[test]
fn fencing_a_leader_makes_it_read_only_until_it_follows_a_higher_term_or_is_promoted() {
    let mut a = leader_a(false);
    let fenced = step(&mut a, Event::FenceRequested { id: 5 });
    let expected = [
        Persist(hard(1, RoleKind::Fenced { reason: FenceReason::Operator }, None)),
        MakeReadOnly,
        StopLeading,
        ServeRelay { leader: None },
        Follow { leader: None, term: Term(2) },
        Answer { id: 5, response: Response::Fence { was_leader: true, term: Term(1) } },
    ];
    assert_eq!(fenced, expected);
    assert_eq!(a.probe_answer().role, RoleKind::Fenced { reason: FenceReason::Operator });
    // A restart keeps it fenced.
    let mut again = Node::new(a.config.clone(), a.hard_state().clone());
    let started = step(&mut again, Event::Start { last: Some(id(1, 20)), applied: None });
    assert_eq!(started, [MakeReadOnly, ServeRelay { leader: None }, Follow { leader: None, term: Term(2) }]);
    // Promoted again, it claims the next term.
    step(&mut again, Event::PromoteRequested { id: 6, force: false });
    let claimed = step(&mut again, Event::ProbesAnswered(vec![follower("b", 1, id(1, 20)), unreachable("c")]));
    assert!(matches!(&claimed[2], ClaimTerm(Claim { term: Term(2), .. })));
    // Fencing a follower only makes sure it is read-only.
    let mut b = follower_b(&["a", "c"]);
    let answered = step(&mut b, Event::FenceRequested { id: 9 });
    let response = Response::Fence { was_leader: false, term: Term(1) };
    assert_eq!(answered, [MakeReadOnly, Answer { id: 9, response }]);
}

#[test]
fn a_switchover_is_refused_to_an_unknown_or_disconnected_node() {
    let mut a = leader_a(false);
    let refusal = |commands: Vec<Command>| match &commands[..] {
        [Answer { response: Response::Switchover(Err(refused)), .. }] => refused.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refusal(step(&mut a, Event::SwitchoverRequested { id: 1, to: "z".into() })),
        SwitchoverRefused::UnknownNode
    );
    assert_eq!(refusal(step(&mut a, Event::SwitchoverRequested { id: 1, to: "a".into() })), SwitchoverRefused::ToSelf);
    step(&mut a, Event::FollowerLeft { node: "c".into() });
    assert_eq!(
        refusal(step(&mut a, Event::SwitchoverRequested { id: 1, to: "c".into() })),
        SwitchoverRefused::NotConnected
    );
    let mut b = follower_b(&["a", "c"]);
    let not_leader = SwitchoverRefused::NotLeader { leader: Some("a".into()) };
    assert_eq!(refusal(step(&mut b, Event::SwitchoverRequested { id: 1, to: "c".into() })), not_leader);
}

#[test]
fn a_switchover_waits_for_the_target_to_apply_everything_then_hands_over() {
    let mut a = leader_a(false);
    let started = step(&mut a, Event::SwitchoverRequested { id: 1, to: "b".into() });
    assert_eq!(started, [MakeReadOnly, AwaitDrained]);
    assert_eq!(step(&mut a, Event::WritesStopped { last: Some(id(1, 22)) }), []);
    let acked =
        |applied| Event::FollowerAcked { node: "b".into(), flushed: Some(Index(22)), applied: Some(Index(applied)) };
    assert_eq!(step(&mut a, acked(21)), []);
    assert_eq!(step(&mut a, acked(22)), [AskPromote { node: "b".into(), term: Term(2) }]);
    let handed = step(&mut a, claim("b", 2, id(1, 22), false));
    let expected = [
        Persist(hard(2, RoleKind::Follower, Some((2, "b")))),
        StopLeading,
        ServeRelay { leader: leader("b", 2) },
        Follow { leader: Some("b".into()), term: Term(2) },
        Answer { id: 1, response: Response::Switchover(Ok(SwitchedOver { to: "b".into(), term: Term(2) })) },
        AnswerClaim { candidate: "b".into(), term: Term(2), vote: Vote::Granted },
    ];
    assert_eq!(handed, expected);
}

#[test]
fn a_claim_of_the_target_before_it_caught_up_is_no_handover() {
    // Found by the simulation: the target, promoted by force meanwhile, lacked entries.
    let mut a = leader_a(false);
    step(&mut a, Event::SwitchoverRequested { id: 1, to: "b".into() });
    step(&mut a, Event::WritesStopped { last: Some(id(1, 22)) });
    let granted = step(&mut a, claim("b", 2, id(1, 15), true));
    assert_eq!(granted[0], Persist(hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, Some((2, "b")))));
    let cancelled = Answer { id: 1, response: Response::Switchover(Err(SwitchoverRefused::Cancelled)) };
    assert_eq!(granted[1..3], [StopLeading, cancelled]);
}

#[test]
fn a_switchover_target_claims_without_probing() {
    let mut b = follower_b(&["a", "c"]);
    let claimed = step(&mut b, Event::HandoverReceived { from: "a".into(), term: Term(2) });
    let claim = Claim { candidate: "b".into(), term: Term(2), last: Some(id(1, 10)), force: false };
    assert_eq!(claimed, [Persist(hard(2, RoleKind::Follower, Some((2, "b")))), StopFollowing, ClaimTerm(claim)]);
    let led = step(&mut b, Event::ClaimsAnswered(vec![vote("a", Vote::Granted), vote("c", Vote::Unreachable)]));
    assert_eq!(led[1], StartLeading { term: Term(2), first_index: Some(Index(11)) });
    assert_eq!(led.last(), Some(&MakeWritable), "no operator to answer on the target");
}

#[test]
fn a_switchover_that_times_out_resumes_writes() {
    let mut a = leader_a(false);
    step(&mut a, Event::SwitchoverRequested { id: 1, to: "b".into() });
    step(&mut a, Event::WritesStopped { last: Some(id(1, 22)) });
    assert_eq!(step(&mut a, Event::Tick { now: TIMEOUT - Duration::from_millis(1) }), []);
    let resumed = step(&mut a, Event::Tick { now: TIMEOUT });
    let timed_out = SwitchoverRefused::TimedOut { applied: Some(Index(15)), needed: Some(Index(22)) };
    assert_eq!(resumed, [MakeWritable, Answer { id: 1, response: Response::Switchover(Err(timed_out)) }]);
    assert_eq!(a.leading(), Some(Term(1)));
}

#[test]
fn losing_the_lease_fences_a_leader_and_renewing_it_resumes_after_a_probe() {
    let mut a = leader_a(true);
    let fenced = step(&mut a, Event::LeaseLost);
    assert_eq!(fenced[0], Persist(hard(1, RoleKind::Fenced { reason: FenceReason::LeaseLost }, None)));
    assert_eq!(fenced[1..3], [MakeReadOnly, StopLeading]);
    assert_eq!(step(&mut a, Event::LeaseRenewed), [ProbePeers]);
    let resumed = step(&mut a, Event::ProbesAnswered(vec![follower("b", 1, id(1, 20)), unreachable("c")]));
    assert_eq!(resumed[0], Persist(hard(1, RoleKind::Leader, None)));
    assert_eq!(resumed[1], StartLeading { term: Term(1), first_index: None });
    // Without the lease enabled, losing it changes nothing.
    let mut a = leader_a(false);
    assert_eq!(step(&mut a, Event::LeaseLost), []);
    assert_eq!(a.leading(), Some(Term(1)));
}

#[test]
fn a_leader_fenced_by_its_lease_that_adopts_a_higher_term_never_resumes_it() {
    // Found by the simulation: the lease renewed, it led the term it had granted to another.
    let mut a = leader_a(true);
    step(&mut a, Event::LeaseLost);
    let granted = step(&mut a, claim("b", 2, id(1, 20), false));
    assert_eq!(granted[0], Persist(hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, Some((2, "b")))));
    assert_eq!(step(&mut a, Event::LeaseRenewed), []);
    assert_eq!(a.role(), &NodeRole::Fenced { reason: FenceReason::Superseded });
}

#[test]
fn a_restarted_leader_leads_again_only_if_no_peer_knows_a_higher_term() {
    let mut a = Node::new(config("a", &["b", "c"], false), HardState::initial(Role::Leader));
    let started = step(&mut a, Event::Start { last: Some(id(1, 20)), applied: None });
    assert_eq!(started, [MakeReadOnly, ServeRelay { leader: None }, ProbePeers]);
    let answers = vec![answer("b", 2, RoleKind::Follower, id(2, 21), Some("c")), unreachable("c")];
    let fenced = step(&mut a, Event::ProbesAnswered(answers));
    let expected = [
        Persist(hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, None)),
        ServeRelay { leader: leader("c", 2) },
        Follow { leader: Some("c".into()), term: Term(2) },
    ];
    assert_eq!(fenced, expected);
    // With the lease on, a leader alone does not lead again.
    let mut a = Node::new(config("a", &["b", "c"], true), HardState::initial(Role::Leader));
    step(&mut a, Event::Start { last: Some(id(1, 20)), applied: None });
    let fenced = step(&mut a, Event::ProbesAnswered(vec![unreachable("b"), unreachable("c")]));
    assert_eq!(fenced[0], Persist(hard(1, RoleKind::Fenced { reason: FenceReason::LeaseLost }, None)));
}

#[test]
fn a_candidate_granting_a_higher_claim_gives_up() {
    let mut b = follower_b(&["a", "c"]);
    claim_after_probe(&mut b, false);
    let granted = step(&mut b, claim("c", 3, id(1, 10), false));
    assert_eq!(granted[0], Persist(hard(3, RoleKind::Follower, Some((3, "c")))));
    let answer = Answer { id: 7, response: Response::Promote(Err(PromoteRefused::Superseded { term: Term(3) })) };
    assert_eq!(granted[1], answer);
    assert_eq!(step(&mut b, Event::ClaimsAnswered(vec![vote("c", Vote::Granted)])), []);
    assert_eq!(b.leading(), None);
}

#[test]
fn requests_during_a_promotion_are_busy() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let busy = step(&mut b, Event::PromoteRequested { id: 8, force: false });
    assert_eq!(busy, [Answer { id: 8, response: Response::Promote(Err(PromoteRefused::Busy)) }]);
}

#[test]
fn a_refused_promotion_returns_to_the_follower_it_was_without_a_lost_leader() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    assert_eq!(step(&mut b, Event::LeaderLost { node: "a".into() }), []);
    step(&mut b, Event::ProbesAnswered(vec![unreachable("a"), follower("c", 1, id(1, 12))]));
    assert_eq!(b.role(), &NodeRole::Follower { leader: None, term: Term(1) });
    assert_eq!(b.probe_answer().leader, None);
}

#[test]
fn refusals_map_to_the_admin_api_status_codes() {
    let alive = PromoteRefused::LeaderAlive { node: "a".into(), term: Term(1), seen_by: "c".into() };
    assert_eq!(Response::Promote(Err(alive)).http_status(), 409);
    let no_majority = PromoteRefused::NoMajority { reached: 1, needed: 2 };
    assert_eq!(Response::Promote(Err(no_majority)).http_status(), 503);
    assert_eq!(Response::Switchover(Err(SwitchoverRefused::UnknownNode)).http_status(), 400);
    assert_eq!(Response::Fence { was_leader: false, term: Term(1) }.http_status(), 200);
}

#[test]
fn a_stale_leader_of_an_older_term_does_not_block_a_promotion() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::HigherTermSeen { term: Term(2), leader: None });
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let answers = vec![answer("a", 1, RoleKind::Leader, id(1, 10), None), follower("c", 2, id(1, 10))];
    let claimed = step(&mut b, Event::ProbesAnswered(answers));
    assert!(matches!(&claimed[2], ClaimTerm(Claim { term: Term(3), .. })), "{claimed:?}");
}

#[test]
fn a_superseded_node_restarts_following_the_term_it_adopted() {
    let fenced = hard(2, RoleKind::Fenced { reason: FenceReason::Superseded }, None);
    let mut a = Node::new(config("a", &["b", "c"], false), fenced);
    let started = step(&mut a, Event::Start { last: Some(id(1, 20)), applied: None });
    assert_eq!(started.last(), Some(&Follow { leader: None, term: Term(2) }));
}

#[test]
fn a_divergence_found_while_a_promotion_probes_refuses_it() {
    // Found by the simulation: ignored, it left a follower whose follower task had ended.
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    let diverged = step(&mut b, Event::DivergenceFound { branch_point: Index(9) });
    let refused =
        Answer { id: 7, response: Response::Promote(Err(PromoteRefused::Divergent { branch_point: Index(9) })) };
    let divergent = hard(1, RoleKind::Divergent { branch_point: Index(9) }, None);
    assert_eq!(diverged, [Persist(divergent), refused, StopFollowing, WriteDivergenceReport { after: Index(9) }]);
    assert_eq!(step(&mut b, Event::ProbesAnswered(vec![unreachable("a"), unreachable("c")])), []);
}

#[test]
fn the_follower_task_reports_while_a_promotion_probes_update_the_role_it_returns_to() {
    let mut b = follower_b(&["a", "c"]);
    step(&mut b, Event::PromoteRequested { id: 7, force: false });
    step(&mut b, Event::LeaderLost { node: "a".into() });
    let accepted = step(&mut b, Event::LeaderAccepted { node: "c".into(), term: Term(2) });
    assert_eq!(accepted, [Persist(hard(2, RoleKind::Follower, None)), ServeRelay { leader: leader("c", 2) }]);
    step(&mut b, Event::ProbesAnswered(vec![unreachable("a"), answer("c", 2, RoleKind::Leader, id(2, 11), None)]));
    assert_eq!(b.role(), &NodeRole::Follower { leader: Some("c".into()), term: Term(2) });
}

#[test]
fn the_leader_knows_what_a_quorum_of_connected_followers_flushed() {
    let mut a = leader_a(false);
    step(&mut a, Event::FollowerAcked { node: "b".into(), flushed: Some(Index(19)), applied: Some(Index(17)) });
    assert_eq!(a.flushed_by(1), Some(Index(19)));
    assert_eq!(a.flushed_by(2), Some(Index(15)));
    assert_eq!(a.flushed_by(3), None);
    step(&mut a, Event::FollowerLeft { node: "b".into() });
    assert_eq!(a.flushed_by(1), Some(Index(15)));
    assert_eq!(a.flushed_by(0), Some(Index(20)));
}
