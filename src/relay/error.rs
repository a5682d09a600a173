//! Errors of the relay protocol: framing and decoding, and the handshake.

use std::io;

use crate::error::ErrorClass;
use crate::lsn::{Index, Term};

use super::RefuseCode;

/// A frame could not be read, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("relay connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection in the middle of a frame ({buffered} bytes of it received)")]
    Eof { buffered: usize },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("frame with an empty body")]
    Empty,
    #[error("frame checksum mismatch: header says {expected:08x}, body has {actual:08x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("{message} message truncated in field {field}")]
    Truncated { message: &'static str, field: &'static str },
    #[error("{message} message: invalid {field}: {reason}")]
    Invalid { message: &'static str, field: &'static str, reason: String },
    #[error("{message} message has {extra} unexpected trailing bytes")]
    TrailingBytes { message: &'static str, extra: usize },
    #[error("cannot encode {field} of {len} bytes: at most {max} fit in a frame")]
    FieldTooLong { field: &'static str, len: usize, max: usize },
}

impl FrameError {
    pub fn class(&self) -> ErrorClass {
        match self {
            FrameError::Io(_) | FrameError::Eof { .. } | FrameError::Checksum { .. } => ErrorClass::Retry,
            // The peer speaks something else than this node: another version, or a bug.
            FrameError::TooLarge { .. }
            | FrameError::Empty
            | FrameError::UnknownType(_)
            | FrameError::Truncated { .. }
            | FrameError::Invalid { .. }
            | FrameError::TrailingBytes { .. } => ErrorClass::Operator,
            FrameError::FieldTooLong { .. } => ErrorClass::Operator,
        }
    }
}

/// A handshake failed. `peer` is "leader" or "follower", `node` the peer's node name.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("the shared token is empty (check token_file)")]
    EmptyToken,
    #[error("{peer} '{node}' is in cluster '{peer_cluster}', this node is in '{own_cluster}'")]
    WrongCluster { peer: &'static str, node: String, peer_cluster: String, own_cluster: String },
    #[error("{peer} '{node}' speaks relay protocol version {version}, this node speaks {own_version}")]
    UnsupportedVersion { peer: &'static str, node: String, version: u16, own_version: u16 },
    #[error("token mismatch: the leader could not prove it knows the shared token (check token_file on both nodes)")]
    LeaderProof { leader: String },
    #[error(
        "token mismatch: follower '{follower}' could not prove it knows the shared token (check token_file on both nodes)"
    )]
    FollowerProof { follower: String },
    #[error("node '{node}' (term {term}) is not the leader; {}", leader_hint(.leader))]
    NotLeader { node: String, term: Term, leader: Option<(String, Term)> },
    #[error(
        "leader '{leader}' is at term {leader_term}, older than this node's term {own_term}: it is a deposed leader"
    )]
    StaleLeader { leader: String, leader_term: Term, own_term: Term },
    #[error("follower '{follower}' knows term {follower_term}, newer than this leader's term {leader_term}: this node is no longer the leader")]
    StaleTerm { follower: String, follower_term: Term, leader_term: Term },
    #[error("follower '{follower}' needs entries from index {next} but this leader's log starts at {first}: re-seed the follower")]
    NotRetained { follower: String, next: Index, first: Index },
    #[error("leader '{leader}' refused this node ({code}): {message}")]
    Refused { leader: String, code: RefuseCode, message: String },
    #[error("the peer closed the handshake with an error: {message}")]
    PeerError { message: String },
    #[error("relay protocol violation during the handshake: {0}")]
    Protocol(String),
}

impl HandshakeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            HandshakeError::EmptyToken
            | HandshakeError::WrongCluster { .. }
            | HandshakeError::UnsupportedVersion { .. }
            | HandshakeError::LeaderProof { .. }
            | HandshakeError::FollowerProof { .. }
            | HandshakeError::NotRetained { .. }
            | HandshakeError::Protocol(_) => ErrorClass::Operator,
            // Leadership moves: another node leads now or soon.
            HandshakeError::NotLeader { .. }
            | HandshakeError::StaleLeader { .. }
            | HandshakeError::StaleTerm { .. }
            | HandshakeError::PeerError { .. } => ErrorClass::Retry,
            HandshakeError::Refused { code, .. } => refuse_class(code),
        }
    }
}

fn refuse_class(code: &RefuseCode) -> ErrorClass {
    match code {
        RefuseCode::WrongCluster
        | RefuseCode::BadProof
        | RefuseCode::UnsupportedVersion
        | RefuseCode::NotRetained { .. }
        | RefuseCode::Diverged(_)
        | RefuseCode::Other => ErrorClass::Operator,
        RefuseCode::NotLeader | RefuseCode::StaleTerm | RefuseCode::Busy => ErrorClass::Retry,
    }
}

/// "the leader is 'a' at term 2", or that it is not known.
fn leader_hint(leader: &Option<(String, Term)>) -> String {
    match leader {
        Some((node, term)) => format!("the leader is '{node}' at term {term}"),
        None => "the leader is not known".to_owned(),
    }
}
