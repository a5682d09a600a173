//! The handshake state machines, tested on the messages they return.

use super::*;
use crate::error::ErrorClass;

const TOKEN: &[u8] = b"s3cret-token";

fn id(term: u64, index: u64) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

fn range(first: u64, last: u64) -> LogRange {
    LogRange { first: Some(Index(first)), last: Some(Index(last)) }
}

fn leader(term: u64, is_leader: bool, range: LogRange, token: &[u8]) -> LeaderHandshake {
    LeaderHandshake::new("shop", "a", Term(term), is_leader, token, range).unwrap()
}

fn follower(cluster: &str, term: u64, flushed: Option<EntryId>, token: &[u8]) -> FollowerHandshake {
    FollowerHandshake::new(cluster, "b", Term(term), flushed, token).unwrap()
}

/// The follower's hello to `leader`, the challenge passed through `tamper` first.
fn hello_to(leader: &LeaderHandshake, f: &mut FollowerHandshake, tamper: impl FnOnce(&mut Challenge)) -> Hello {
    let mut challenge = leader.challenge();
    tamper(&mut challenge);
    f.on_challenge(&challenge).unwrap()
}

fn refusal(leader: LeaderHandshake, hello: &Hello) -> Refused {
    *leader.on_hello(hello).unwrap_err()
}

#[test]
fn the_right_token_is_accepted_both_ways() {
    let l = leader(3, true, range(1, 90), TOKEN);
    let mut f = follower("shop", 3, Some(id(3, 41)), TOKEN);
    let hello = hello_to(&l, &mut f, |_| {});
    let accepted = l.on_hello(&hello).unwrap();
    assert_eq!(accepted.start, StreamStart::From(Index(42)));
    assert_eq!(accepted.follower, "b");
    assert_eq!(accepted.flushed, Some(id(3, 41)));
    let session = f.on_reply(Message::Welcome(accepted.welcome)).unwrap();
    let expected = Session {
        leader_node: "a".into(),
        term: Term(3),
        first_index: Some(Index(1)),
        last_index: Some(Index(90)),
        start: StreamStart::From(Index(42)),
    };
    assert_eq!(session, expected);
}

#[test]
fn an_empty_follower_starts_at_one_and_a_seeding_one_skips_retention() {
    let mut f = follower("shop", 0, None, TOKEN);
    let l = leader(1, true, LogRange::default(), TOKEN);
    let hello = hello_to(&l, &mut f, |_| {});
    assert_eq!(l.on_hello(&hello).unwrap().start, StreamStart::From(Index(1)));

    let l = leader(2, true, range(500, 900), TOKEN);
    let mut f = follower("shop", 1, None, TOKEN).request_seed();
    let hello = hello_to(&l, &mut f, |_| {});
    assert!(hello.seed);
    let accepted = l.on_hello(&hello).unwrap();
    assert_eq!(accepted.start, StreamStart::Seed);
    assert_eq!(f.on_welcome(&accepted.welcome).unwrap().start, StreamStart::Seed);
}

#[test]
fn a_hello_answering_another_challenge_is_refused() {
    let mut f = follower("shop", 3, None, TOKEN);
    let replayed = hello_to(&leader(3, true, range(1, 9), TOKEN), &mut f, |_| {});
    let refused = refusal(leader(3, true, range(1, 9), TOKEN), &replayed);
    assert_eq!(refused.refuse.code, RefuseCode::BadProof);
}

#[test]
fn a_follower_with_the_wrong_token_is_refused() {
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("shop", 3, None, b"other-token");
    let hello = hello_to(&l, &mut f, |_| {});
    let refused = refusal(l, &hello);
    assert_eq!(refused.refuse.code, RefuseCode::BadProof);
    assert_eq!(
        refused.error.to_string(),
        "token mismatch: follower 'b' could not prove it knows the shared token (check token_file on both nodes)"
    );
    assert_eq!(refused.error.class(), ErrorClass::Operator);
}

#[test]
fn a_leader_with_the_wrong_token_is_refused() {
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("shop", 3, None, TOKEN);
    let hello = hello_to(&l, &mut f, |_| {});
    // A leader that knows another token answers the follower's nonce as well as it can.
    let fields = [&hello.nonce[..], &l.nonce, b"shop", b"a"];
    let forged = Welcome {
        term: Term(3),
        leader_node: "a".into(),
        first_index: None,
        last_index: None,
        proof: Key::new(b"other-token").unwrap().prove(LEADER_LABEL, &fields),
    };
    let error = f.on_welcome(&forged).unwrap_err();
    assert_eq!(
        error.to_string(),
        "token mismatch: the leader could not prove it knows the shared token (check token_file on both nodes)"
    );
    // The real leader's welcome, with one bit of its proof flipped.
    let mut welcome = l.on_hello(&hello).unwrap().welcome;
    welcome.proof[31] ^= 1;
    assert!(matches!(f.on_welcome(&welcome), Err(HandshakeError::LeaderProof { .. })));
}

#[test]
fn proofs_bind_their_labels_and_field_boundaries() {
    let key = Key::new(TOKEN).unwrap();
    let a = key.prove(LEADER_LABEL, &[b"ab", b"c"]);
    assert_ne!(a, key.prove(LEADER_LABEL, &[b"a", b"bc"]));
    assert_ne!(a, key.prove(FOLLOWER_LABEL, &[b"ab", b"c"]));
    assert!(key.verify(LEADER_LABEL, &[b"ab", b"c"], &a));
}

#[test]
fn a_welcome_for_another_term_or_before_the_challenge_is_a_protocol_error() {
    let fresh = follower("shop", 3, None, TOKEN);
    let proof_less =
        Welcome { term: Term(3), leader_node: "a".into(), first_index: None, last_index: None, proof: [0; 32] };
    assert!(matches!(fresh.on_welcome(&proof_less), Err(HandshakeError::Protocol(_))));
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("shop", 3, None, TOKEN);
    let hello = hello_to(&l, &mut f, |_| {});
    let mut welcome = l.on_hello(&hello).unwrap().welcome;
    welcome.term = Term(4);
    assert!(matches!(f.on_welcome(&welcome), Err(HandshakeError::Protocol(_))));
}

#[test]
fn wrong_clusters_are_refused_both_ways() {
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("other", 3, None, TOKEN);
    let error = f.on_challenge(&l.challenge()).unwrap_err();
    assert_eq!(error.to_string(), "leader 'a' is in cluster 'shop', this node is in 'other'");

    let mut f = follower("shop", 3, None, TOKEN);
    let mut hello = hello_to(&l, &mut f, |_| {});
    hello.cluster = "other".into();
    let refused = refusal(l, &hello);
    assert_eq!(refused.refuse.code, RefuseCode::WrongCluster);
    assert_eq!(refused.refuse.message, "follower 'b' is in cluster 'other', this node is in 'shop'");
}

#[test]
fn unsupported_versions_are_refused_both_ways() {
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("shop", 3, None, TOKEN);
    let mut challenge = l.challenge();
    challenge.version = 2;
    let error = f.on_challenge(&challenge).unwrap_err();
    assert_eq!(error.to_string(), "leader 'a' speaks relay protocol version 2, this node speaks 1");

    let mut hello = hello_to(&l, &mut f, |_| {});
    hello.version = 2;
    assert_eq!(refusal(l, &hello).refuse.code, RefuseCode::UnsupportedVersion);
}

#[test]
fn a_follower_with_a_newer_term_refuses_the_old_leader_and_is_refused_by_it() {
    let l = leader(3, true, range(1, 9), TOKEN);
    let mut f = follower("shop", 5, None, TOKEN);
    let error = f.on_challenge(&l.challenge()).unwrap_err();
    assert!(matches!(error, HandshakeError::StaleLeader { .. }), "{error}");
    assert_eq!(error.class(), ErrorClass::Retry);
    // A last entry of a newer term counts as well.
    let mut f = follower("shop", 3, Some(id(4, 7)), TOKEN);
    assert!(f.on_challenge(&l.challenge()).is_err());

    // The leader refuses such a follower even if the follower is fooled about its term.
    let mut f = follower("shop", 5, None, TOKEN);
    let hello = hello_to(&l, &mut f, |c| c.term = Term(5));
    let refused = refusal(l, &hello);
    assert_eq!(refused.refuse.code, RefuseCode::StaleTerm);
    assert!(matches!(refused.error, HandshakeError::StaleTerm { follower_term: Term(5), .. }));
}

#[test]
fn a_node_that_does_not_lead_is_refused() {
    let l = leader(3, false, range(1, 9), TOKEN).with_leader(Some(("c".into(), Term(3))));
    let mut f = follower("shop", 3, None, TOKEN);
    let error = f.on_challenge(&l.challenge()).unwrap_err();
    assert_eq!(error.to_string(), "node 'a' (term 3) is not the leader; the leader is not known");
    let hello = hello_to(&l, &mut f, |c| c.is_leader = true);
    let refused = refusal(l, &hello);
    assert_eq!(refused.refuse.code, RefuseCode::NotLeader);
    assert_eq!(refused.refuse.message, "node 'a' (term 3) is not the leader; the leader is 'c' at term 3");
}

#[test]
fn a_follower_behind_the_retained_log_must_be_reseeded() {
    for (flushed, accepted) in [(Some(id(2, 10)), false), (None, false), (Some(id(2, 49)), true)] {
        let l = leader(3, true, range(50, 90), TOKEN);
        let mut f = follower("shop", 3, flushed, TOKEN);
        let hello = hello_to(&l, &mut f, |_| {});
        match l.on_hello(&hello) {
            Ok(a) => assert!(accepted && a.start == StreamStart::From(Index(50))),
            Err(refused) => {
                assert!(!accepted, "{flushed:?}");
                assert_eq!(refused.refuse.code, RefuseCode::NotRetained { first: Index(50) });
                assert!(refused.refuse.message.ends_with("starts at 50: re-seed the follower"));
                let error = f.on_reply(Message::Refuse(refused.refuse)).unwrap_err();
                assert!(matches!(error, HandshakeError::Refused { ref leader, .. } if leader == "a"));
                assert_eq!(error.class(), ErrorClass::Operator);
            }
        }
    }
}

#[test]
fn hostile_positions_do_not_overflow() {
    let l = leader(u64::MAX, true, range(1, 9), TOKEN);
    let mut f = follower("shop", u64::MAX, Some(id(u64::MAX, u64::MAX)), TOKEN);
    let hello = hello_to(&l, &mut f, |_| {});
    assert_eq!(l.on_hello(&hello).unwrap().start, StreamStart::From(Index(u64::MAX)));
}

#[test]
fn other_replies_end_the_handshake() {
    let f = follower("shop", 3, None, TOKEN);
    let error = f.on_reply(Message::Error { message: "bye".into() }).unwrap_err();
    assert_eq!(error, HandshakeError::PeerError { message: "bye".into() });
    let error = f.on_reply(Message::SeedRequest).unwrap_err();
    assert_eq!(
        error.to_string(),
        "relay protocol violation during the handshake: expected Welcome or Refuse, got SeedRequest"
    );
}

#[test]
fn an_empty_token_is_refused_and_a_key_is_not_shown() {
    assert!(matches!(
        LeaderHandshake::new("shop", "a", Term(1), true, b"", LogRange::default()),
        Err(HandshakeError::EmptyToken)
    ));
    assert!(FollowerHandshake::new("shop", "b", Term(1), None, b"").is_err());
    let debug = format!("{:?}", leader(1, true, LogRange::default(), TOKEN));
    assert!(debug.contains("Key(..)"));
}

#[test]
fn nonces_are_fresh() {
    let a = leader(1, true, LogRange::default(), TOKEN).challenge().nonce;
    let b = leader(1, true, LogRange::default(), TOKEN).challenge().nonce;
    assert_ne!(a, b);
}
