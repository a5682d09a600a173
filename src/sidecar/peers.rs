//! Asking the peers, over their admin API: a probe (`GET /node/probe`), a claim of a term
//! (`POST /node/claim`) and a switchover's hand-over (`POST /node/handover`). Every peer is
//! asked at once with a short timeout, and every peer gets an answer entry, unreachable ones
//! too: the machine counts them.
//!
//! Claims and hand-overs carry the cluster's token; a probe says nothing a peer could abuse
//! (term, role, last entry) and needs none.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::admin::client;
use crate::config::Peer;
use crate::lsn::{EntryId, Index, Term};
use crate::node::machine::{Claim, ClaimAnswer, PeerAnswer, PeerState, Vote};
use crate::node::{NodeId, RoleKind};

/// How long a peer may take to answer a probe or a claim.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe's answer as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeJson {
    pub term: u64,
    pub role: RoleKind,
    pub last: Option<[u64; 2]>,
    pub leader: Option<String>,
}

impl From<&PeerState> for ProbeJson {
    fn from(s: &PeerState) -> ProbeJson {
        ProbeJson { term: s.term.0, role: s.role.clone(), last: s.last.map(pair), leader: s.leader.clone() }
    }
}

impl From<ProbeJson> for PeerState {
    fn from(p: ProbeJson) -> PeerState {
        PeerState { term: Term(p.term), role: p.role, last: p.last.map(entry), leader: p.leader }
    }
}

/// A claim's vote as JSON: `granted`, or refused with the voter's term and last entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteJson {
    pub granted: bool,
    pub term: u64,
    pub last: Option<[u64; 2]>,
}

impl VoteJson {
    pub fn of(vote: &Vote, own_term: Term) -> VoteJson {
        match vote {
            Vote::Granted => VoteJson { granted: true, term: own_term.0, last: None },
            Vote::Refused { term, last } => VoteJson { granted: false, term: term.0, last: last.map(pair) },
            Vote::Unreachable => VoteJson { granted: false, term: own_term.0, last: None },
        }
    }

    fn vote(self) -> Vote {
        if self.granted {
            Vote::Granted
        } else {
            Vote::Refused { term: Term(self.term), last: self.last.map(entry) }
        }
    }
}

fn pair(id: EntryId) -> [u64; 2] {
    [id.term.0, id.index.0]
}

fn entry([term, index]: [u64; 2]) -> EntryId {
    EntryId { term: Term(term), index: Index(index) }
}

/// The query string of a claim.
pub fn claim_query(claim: &Claim) -> String {
    let mut query = format!("candidate={}&term={}&force={}", claim.candidate, claim.term.0, claim.force);
    if let Some(last) = claim.last {
        query.push_str(&format!("&last_term={}&last_index={}", last.term.0, last.index.0));
    }
    query
}

/// The peers of the configuration, and the token that proves this node to them.
#[derive(Clone)]
pub struct Peers {
    pub peers: Vec<Peer>,
    pub token: Option<Arc<str>>,
}

impl Peers {
    /// Every peer's probe answer (`None` where it did not answer in time).
    pub async fn probe(&self) -> Vec<PeerAnswer> {
        let asks = self.peers.iter().map(|peer| async move {
            let state = match ask(peer, "GET", "/node/probe", None).await {
                Ok(body) => serde_json::from_str::<ProbeJson>(&body).ok().map(PeerState::from),
                Err(e) => {
                    debug!(peer = %peer.node, error = %e, "peer did not answer the probe");
                    None
                }
            };
            PeerAnswer { node: peer.node.clone(), state }
        });
        futures_util::future::join_all(asks).await
    }

    /// Every peer's vote on `claim`.
    pub async fn claim(&self, claim: &Claim) -> Vec<ClaimAnswer> {
        let path = format!("/node/claim?{}", claim_query(claim));
        let asks = self.peers.iter().map(|peer| {
            let path = path.clone();
            async move {
                let vote = match ask(peer, "POST", &path, self.token.as_deref()).await {
                    Ok(body) => serde_json::from_str::<VoteJson>(&body).map_or(Vote::Unreachable, VoteJson::vote),
                    Err(e) => {
                        debug!(peer = %peer.node, error = %e, "peer did not answer the claim");
                        Vote::Unreachable
                    }
                };
                ClaimAnswer { node: peer.node.clone(), vote }
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// Asks `node` to promote itself to `term` (a switchover's last step).
    pub async fn hand_over(&self, node: &NodeId, from: &str, term: Term) -> Result<(), client::ClientError> {
        let Some(peer) = self.peers.iter().find(|p| &p.node == node) else { return Ok(()) };
        let path = format!("/node/handover?from={from}&term={}", term.0);
        ask(peer, "POST", &path, self.token.as_deref()).await.map(|_| ())
    }
}

async fn ask(peer: &Peer, method: &str, path: &str, token: Option<&str>) -> Result<String, client::ClientError> {
    let url = format!("http://{}", peer.admin);
    let asked = client::request(&url, method, path, token);
    let (code, body) = tokio::time::timeout(PEER_TIMEOUT, asked)
        .await
        .map_err(|_| client::ClientError::Timeout { addr: peer.admin.clone(), timeout: PEER_TIMEOUT })??;
    if code != 200 {
        return Err(client::ClientError::Status { addr: peer.admin.clone(), code, body });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_votes_round_trip_through_json() {
        let state = PeerState {
            term: Term(4),
            role: RoleKind::Divergent { branch_point: Index(9) },
            last: Some(EntryId { term: Term(3), index: Index(12) }),
            leader: Some("b".into()),
        };
        let text = serde_json::to_string(&ProbeJson::from(&state)).unwrap();
        assert_eq!(PeerState::from(serde_json::from_str::<ProbeJson>(&text).unwrap()), state);
        let refused = Vote::Refused { term: Term(5), last: Some(EntryId { term: Term(5), index: Index(2) }) };
        for vote in [Vote::Granted, refused] {
            let text = serde_json::to_string(&VoteJson::of(&vote, Term(5))).unwrap();
            assert_eq!(serde_json::from_str::<VoteJson>(&text).unwrap().vote(), vote);
        }
        let claim = Claim { candidate: "c".into(), term: Term(2), last: None, force: true };
        assert_eq!(claim_query(&claim), "candidate=c&term=2&force=true");
    }
}
