//! The handshake as two state machines without I/O: messages in, messages and decisions out.

use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::lsn::{EntryId, Index, Term};

use super::{Challenge, HandshakeError, Hello, Message, Nonce, Proof, Refuse, RefuseCode, Welcome};
use super::{NONCE_BYTES, PROTOCOL_VERSION};

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;

const FOLLOWER_LABEL: &[u8] = b"walship-follower";
const LEADER_LABEL: &[u8] = b"walship-leader";

/// The entries a leader holds: `None` when its log is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRange {
    pub first: Option<Index>,
    pub last: Option<Index>,
}

/// Where a follower's stream begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStart {
    /// The follower sends `SeedRequest` next and streams after the snapshot's position.
    Seed,
    /// Records from this index on.
    From(Index),
}

/// The leader accepted a follower: send `welcome`, then serve from `start`.
///
/// Before streaming, the server must check that its log holds `flushed` with the same term
/// (when it holds that index at all): a follower whose last entry is not in the leader's log
/// has diverged and must not be streamed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub welcome: Welcome,
    pub follower: String,
    pub follower_term: Term,
    pub flushed: Option<EntryId>,
    pub start: StreamStart,
}

/// The leader refused a follower: send `refuse`, close, and log `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub refuse: Refuse,
    pub error: HandshakeError,
}

/// The follower accepted a leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub leader_node: String,
    pub term: Term,
    pub first_index: Option<Index>,
    pub last_index: Option<Index>,
    pub start: StreamStart,
}

/// The leader's side of one connection's handshake.
#[derive(Debug)]
pub struct LeaderHandshake {
    key: Key,
    cluster: String,
    leader_node: String,
    term: Term,
    is_leader: bool,
    /// Who leads, as this node knows it, when it does not: named in its refusal.
    leader: Option<(String, Term)>,
    range: LogRange,
    nonce: Nonce,
}

impl LeaderHandshake {
    /// Starts a handshake with a fresh nonce. Fails only on an empty token.
    pub fn new(
        cluster: &str,
        leader_node: &str,
        term: Term,
        is_leader: bool,
        token: &[u8],
        range: LogRange,
    ) -> Result<LeaderHandshake, HandshakeError> {
        Ok(LeaderHandshake {
            key: Key::new(token)?,
            cluster: cluster.to_owned(),
            leader_node: leader_node.to_owned(),
            term,
            is_leader,
            leader: None,
            range,
            nonce: fresh_nonce(),
        })
    }

    /// Names the leader in the refusal a node that does not lead sends.
    pub fn with_leader(mut self, leader: Option<(String, Term)>) -> LeaderHandshake {
        self.leader = leader;
        self
    }

    /// The message to send as soon as the follower connects.
    pub fn challenge(&self) -> Challenge {
        Challenge {
            version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            leader_node: self.leader_node.clone(),
            term: self.term,
            is_leader: self.is_leader,
            nonce: self.nonce,
        }
    }

    /// Decides on the follower's `Hello`. Consumes the handshake: a nonce answers one hello.
    pub fn on_hello(self, hello: &Hello) -> Result<Accepted, Box<Refused>> {
        let start = self.check(hello).map_err(|(code, error)| {
            Box::new(Refused { refuse: Refuse { code, message: error.to_string() }, error })
        })?;
        let fields = [&hello.nonce[..], &self.nonce, self.cluster.as_bytes(), self.leader_node.as_bytes()];
        let proof = self.key.prove(LEADER_LABEL, &fields);
        Ok(Accepted {
            welcome: Welcome {
                term: self.term,
                leader_node: self.leader_node,
                first_index: self.range.first,
                last_index: self.range.last,
                proof,
            },
            follower: hello.node.clone(),
            follower_term: hello.term,
            flushed: hello.flushed,
            start,
        })
    }

    fn check(&self, hello: &Hello) -> Result<StreamStart, (RefuseCode, HandshakeError)> {
        let follower = || hello.node.clone();
        if hello.version != PROTOCOL_VERSION {
            let error = HandshakeError::UnsupportedVersion {
                peer: "follower",
                node: follower(),
                version: hello.version,
                own_version: PROTOCOL_VERSION,
            };
            return Err((RefuseCode::UnsupportedVersion, error));
        }
        if hello.cluster != self.cluster {
            let error = HandshakeError::WrongCluster {
                peer: "follower",
                node: follower(),
                peer_cluster: hello.cluster.clone(),
                own_cluster: self.cluster.clone(),
            };
            return Err((RefuseCode::WrongCluster, error));
        }
        let fields = [&self.nonce[..], &hello.nonce, hello.cluster.as_bytes(), hello.node.as_bytes()];
        if !self.key.verify(FOLLOWER_LABEL, &fields, &hello.proof) {
            return Err((RefuseCode::BadProof, HandshakeError::FollowerProof { follower: follower() }));
        }
        self.check_leadership(hello)?;
        self.start(hello)
    }

    fn check_leadership(&self, hello: &Hello) -> Result<(), (RefuseCode, HandshakeError)> {
        let follower_term = known_term(hello.term, hello.flushed);
        if follower_term > self.term {
            let error =
                HandshakeError::StaleTerm { follower: hello.node.clone(), follower_term, leader_term: self.term };
            return Err((RefuseCode::StaleTerm, error));
        }
        if !self.is_leader {
            let error = HandshakeError::NotLeader {
                node: self.leader_node.clone(),
                term: self.term,
                leader: self.leader.clone(),
            };
            return Err((RefuseCode::NotLeader, error));
        }
        Ok(())
    }

    fn start(&self, hello: &Hello) -> Result<StreamStart, (RefuseCode, HandshakeError)> {
        if hello.seed {
            return Ok(StreamStart::Seed);
        }
        let next = next_index(hello.flushed);
        match self.range.first {
            Some(first) if next < first => {
                let error = HandshakeError::NotRetained { follower: hello.node.clone(), next, first };
                Err((RefuseCode::NotRetained { first }, error))
            }
            _ => Ok(StreamStart::From(next)),
        }
    }
}

/// The follower's side of one connection's handshake.
#[derive(Debug)]
pub struct FollowerHandshake {
    key: Key,
    cluster: String,
    node: String,
    term: Term,
    flushed: Option<EntryId>,
    seed: bool,
    nonce: Nonce,
    /// The challenge answered, once it is.
    challenge: Option<Challenge>,
}

impl FollowerHandshake {
    /// Starts a handshake with a fresh nonce. Fails only on an empty token.
    pub fn new(
        cluster: &str,
        node: &str,
        term: Term,
        flushed: Option<EntryId>,
        token: &[u8],
    ) -> Result<FollowerHandshake, HandshakeError> {
        Ok(FollowerHandshake {
            key: Key::new(token)?,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            term,
            flushed,
            seed: false,
            nonce: fresh_nonce(),
            challenge: None,
        })
    }

    /// Asks the leader for a snapshot (this node's database is empty or must be re-seeded).
    pub fn request_seed(mut self) -> FollowerHandshake {
        self.seed = true;
        self
    }

    /// Answers the leader's challenge, or refuses the leader: then send `Error` and close.
    pub fn on_challenge(&mut self, challenge: &Challenge) -> Result<Hello, HandshakeError> {
        self.check(challenge)?;
        let fields = [&challenge.nonce[..], &self.nonce, self.cluster.as_bytes(), self.node.as_bytes()];
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            term: self.term,
            flushed: self.flushed,
            seed: self.seed,
            nonce: self.nonce,
            proof: self.key.prove(FOLLOWER_LABEL, &fields),
        };
        self.challenge = Some(challenge.clone());
        Ok(hello)
    }

    fn check(&self, challenge: &Challenge) -> Result<(), HandshakeError> {
        let leader = || challenge.leader_node.clone();
        if challenge.version != PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion {
                peer: "leader",
                node: leader(),
                version: challenge.version,
                own_version: PROTOCOL_VERSION,
            });
        }
        if challenge.cluster != self.cluster {
            return Err(HandshakeError::WrongCluster {
                peer: "leader",
                node: leader(),
                peer_cluster: challenge.cluster.clone(),
                own_cluster: self.cluster.clone(),
            });
        }
        let own_term = known_term(self.term, self.flushed);
        if challenge.term < own_term {
            return Err(HandshakeError::StaleLeader { leader: leader(), leader_term: challenge.term, own_term });
        }
        if !challenge.is_leader {
            return Err(HandshakeError::NotLeader { node: leader(), term: challenge.term, leader: None });
        }
        Ok(())
    }

    /// Accepts the leader's `Welcome` if it proves the leader knows the token.
    pub fn on_welcome(&self, welcome: &Welcome) -> Result<Session, HandshakeError> {
        let Some(challenge) = &self.challenge else {
            return Err(HandshakeError::Protocol("Welcome before Challenge".to_owned()));
        };
        let cluster = self.cluster.as_bytes();
        let fields = [&self.nonce[..], &challenge.nonce, cluster, challenge.leader_node.as_bytes()];
        if !self.key.verify(LEADER_LABEL, &fields, &welcome.proof) {
            return Err(HandshakeError::LeaderProof { leader: challenge.leader_node.clone() });
        }
        if welcome.leader_node != challenge.leader_node || welcome.term != challenge.term {
            return Err(HandshakeError::Protocol(format!(
                "Welcome from '{}' at term {} answers a Challenge from '{}' at term {}",
                welcome.leader_node, welcome.term, challenge.leader_node, challenge.term
            )));
        }
        Ok(Session {
            leader_node: welcome.leader_node.clone(),
            term: welcome.term,
            first_index: welcome.first_index,
            last_index: welcome.last_index,
            start: match self.seed {
                true => StreamStart::Seed,
                false => StreamStart::From(next_index(self.flushed)),
            },
        })
    }

    /// Handles the leader's answer to the `Hello`: `Welcome`, `Refuse` or `Error`.
    pub fn on_reply(&self, reply: Message) -> Result<Session, HandshakeError> {
        let leader = || self.challenge.as_ref().map(|c| c.leader_node.clone()).unwrap_or_default();
        match reply {
            Message::Welcome(welcome) => self.on_welcome(&welcome),
            Message::Refuse(Refuse { code, message }) => {
                Err(HandshakeError::Refused { leader: leader(), code, message })
            }
            Message::Error { message } => Err(HandshakeError::PeerError { message }),
            other => Err(HandshakeError::Protocol(format!("expected Welcome or Refuse, got {}", other.name()))),
        }
    }
}

/// The newest term a node knows of: its own, or that of its last entry if newer.
fn known_term(term: Term, flushed: Option<EntryId>) -> Term {
    flushed.map_or(term, |id| id.term.max(term))
}

/// The first index a node lacks. Saturates: `flushed` may come off the wire.
fn next_index(flushed: Option<EntryId>) -> Index {
    flushed.map_or(Index(1), |id| Index(id.index.0.saturating_add(1)))
}

fn fresh_nonce() -> Nonce {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}

/// HMAC-SHA256 keyed by the shared token. Its `Debug` does not show the key.
#[derive(Clone)]
struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    fn new(token: &[u8]) -> Result<Key, HandshakeError> {
        if token.is_empty() {
            return Err(HandshakeError::EmptyToken);
        }
        // HMAC takes keys of any length: this cannot fail.
        Hmac::new_from_slice(token).map(Key).map_err(|_| HandshakeError::EmptyToken)
    }

    /// The MAC over `label` and `fields`, each preceded by its length.
    fn mac(&self, label: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for field in std::iter::once(label).chain(fields.iter().copied()) {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac
    }

    fn prove(&self, label: &[u8], fields: &[&[u8]]) -> Proof {
        self.mac(label, fields).finalize().into_bytes().into()
    }

    /// Compares in constant time.
    fn verify(&self, label: &[u8], fields: &[&[u8]], proof: &Proof) -> bool {
        self.mac(label, fields).verify_slice(proof).is_ok()
    }
}
