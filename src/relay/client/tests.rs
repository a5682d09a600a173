use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::{find_leader, FollowError, Resume};
use crate::config::Peer;
use crate::lsn::{EntryId, Index, Term};
use crate::relay::{encode_frame, Challenge, Message, PROTOCOL_VERSION};

fn id(term: u64, index: u64) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

#[test]
fn a_connection_announces_the_log_and_the_floor_only_while_the_log_is_empty() {
    assert_eq!(Resume::Seed.flushed(None), None);
    assert_eq!(Resume::After { floor: None }.flushed(None), None);
    assert_eq!(Resume::After { floor: Some(id(1, 7)) }.flushed(None), Some(id(1, 7)));
    assert_eq!(Resume::After { floor: Some(id(1, 7)) }.flushed(Some(id(2, 9))), Some(id(2, 9)));
}

/// A peer that answers every connection with this challenge, as a relay server does.
async fn peer(node: &str, cluster: &str, term: u64, is_leader: bool) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap().to_string();
    let challenge = Challenge {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        leader_node: node.to_owned(),
        term: Term(term),
        is_leader,
        nonce: [0; 32],
    };
    let mut frame = BytesMut::new();
    encode_frame(&Message::Challenge(challenge), &mut frame).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(&frame).await;
        }
    });
    Peer { node: node.to_owned(), relay, admin: String::new() }
}

/// A peer nobody listens for.
async fn gone(node: &str) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap().to_string();
    drop(listener);
    Peer { node: node.to_owned(), relay, admin: String::new() }
}

#[tokio::test]
async fn the_leader_is_the_peer_of_this_cluster_that_leads_at_the_highest_term() {
    let peers = vec![
        gone("a").await,
        peer("b", "shop", 2, true).await,
        peer("c", "other", 9, true).await,
        peer("d", "shop", 3, true).await,
        peer("e", "shop", 5, false).await,
    ];
    let found = find_leader(&peers, "shop", Term(2)).await.unwrap();
    assert_eq!(found.to_string(), peers[3].relay);
    // A leader older than this node's own term is no leader.
    let none = find_leader(&peers, "shop", Term(4)).await;
    assert!(matches!(&none, Err(FollowError::NoLeader(cluster)) if cluster == "shop"), "{none:?}");
}
