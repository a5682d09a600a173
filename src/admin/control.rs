//! The admin API's writes: `POST /promote`, `/switchover?to=NODE` and `/fence` for operators,
//! and `/node/probe`, `/node/claim`, `/node/handover` for the peers' control loops. Every POST
//! needs `Authorization: Bearer <token>` (the cluster's token): without it, 401.
//!
//! A request goes to the node's control loop as an [`Input`]; the handler waits for the
//! machine's answer and turns it into JSON with the status code the machine chose.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::lsn::{EntryId, Index, Term};
use crate::node::inbox::{Input, Request};
use crate::node::machine::{Claim, PromoteRefused, Response, SwitchoverRefused};
use crate::sidecar::peers::{ProbeJson, VoteJson};

use super::AdminState;

/// How long an operator's request waits for the machine's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

type Answer = (StatusCode, Json<Value>);

fn error(code: StatusCode, message: impl Into<String>) -> Answer {
    (code, Json(json!({ "error": message.into() })))
}

/// 401 unless the request carries the cluster's token.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Answer> {
    let Some(token) = &state.token else {
        return Err(error(StatusCode::UNAUTHORIZED, "this node has no token_file: it accepts no admin writes"));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token) => Ok(()),
        Some(_) => Err(error(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Err(error(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <token>")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ask(state: &AdminState, request: Request) -> Result<Response, Answer> {
    let (reply, answer) = oneshot::channel();
    state
        .inbox
        .send(Input::Request { request, reply })
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"))?;
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(_)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the node stopped before answering")),
        Err(_) => Err(error(StatusCode::GATEWAY_TIMEOUT, "no answer within 60 s; see /status")),
    }
}

fn code(response: &Response) -> StatusCode {
    StatusCode::from_u16(response.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn entry(id: EntryId) -> Value {
    json!({ "term": id.term.0, "index": id.index.0 })
}

#[derive(Deserialize)]
pub struct PromoteQuery {
    #[serde(default)]
    force: bool,
}

pub async fn promote(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(q): Query<PromoteQuery>,
) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let started = Instant::now();
    let response = match ask(&state, Request::Promote { force: q.force }).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let body = match &response {
        Response::Promote(Ok(p)) => {
            let lost: Vec<Value> =
                p.lost.iter().map(|(node, last)| json!({ "node": node, "last": entry(*last) })).collect();
            json!({
                "promoted": state.node,
                "term": p.term.0,
                "first_index": p.first_index.0,
                "took_ms": took_ms,
                "lost": lost,
                "unsafe_no_majority": p.unsafe_no_majority,
            })
        }
        Response::Promote(Err(refused)) => json!({ "error": promote_refused(refused), "took_ms": took_ms }),
        other => json!({ "error": format!("unexpected answer {other:?}") }),
    };
    (code(&response), Json(body))
}

fn promote_refused(refused: &PromoteRefused) -> String {
    match refused {
        PromoteRefused::PeerAhead { node, last } => format!(
            "{node} holds entries this node lacks (its last is {last}): promote {node}, or add ?force=true to lose them"
        ),
        PromoteRefused::LeaderAlive { node, term, seen_by } => format!(
            "{node} leads term {term} (seen by {seen_by}): use switchover, or fence it first"
        ),
        PromoteRefused::NoMajority { reached, needed } => format!(
            "only {reached} of the {needed} nodes a majority needs answered: add ?force=true only if the others are dead"
        ),
        PromoteRefused::LeaseRequired { reached, needed } => {
            format!("the lease needs a majority ({reached} of {needed} reached): cannot force")
        }
        PromoteRefused::AlreadyLeader { term } => format!("this node already leads term {term}"),
        PromoteRefused::Busy => "this node is busy with another role change; try again".into(),
        PromoteRefused::Divergent { branch_point } => format!(
            "this node's log diverged after entry {branch_point}: it must be re-seeded (walship reseed)"
        ),
        PromoteRefused::Superseded { term } => format!("a newer term {term} appeared meanwhile"),
        PromoteRefused::Cancelled => "cancelled: the node was fenced meanwhile".into(),
    }
}

#[derive(Deserialize)]
pub struct SwitchoverQuery {
    to: String,
}

pub async fn switchover(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(q): Query<SwitchoverQuery>,
) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let started = Instant::now();
    let response = match ask(&state, Request::Switchover { to: q.to.clone() }).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let body = match &response {
        Response::Switchover(Ok(done)) => {
            json!({ "leader": done.to, "term": done.term.0, "write_pause_ms": took_ms })
        }
        Response::Switchover(Err(refused)) => {
            json!({ "error": switchover_refused(refused, &q.to), "took_ms": took_ms })
        }
        other => json!({ "error": format!("unexpected answer {other:?}") }),
    };
    (code(&response), Json(body))
}

fn switchover_refused(refused: &SwitchoverRefused, to: &str) -> String {
    match refused {
        SwitchoverRefused::NotLeader { leader: Some(leader) } => format!("not the leader: ask {leader}"),
        SwitchoverRefused::NotLeader { leader: None } => "not the leader".into(),
        SwitchoverRefused::UnknownNode => format!("{to} is not a peer of this node"),
        SwitchoverRefused::NotConnected => format!("{to} is not connected to this leader"),
        SwitchoverRefused::ToSelf => "this node already leads".into(),
        SwitchoverRefused::Busy => "this node is busy with another role change; try again".into(),
        SwitchoverRefused::TimedOut { applied, needed } => format!(
            "{to} had applied {} of {} in time; this node takes writes again",
            applied.map_or("nothing".into(), |i| i.to_string()),
            needed.map_or("nothing".into(), |i| i.to_string())
        ),
        SwitchoverRefused::Cancelled => "cancelled: fenced, or a newer term appeared".into(),
    }
}

pub async fn fence(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let response = match ask(&state, Request::Fence).await {
        Ok(response) => response,
        Err(failed) => return failed,
    };
    let body = match &response {
        Response::Fence { was_leader, term } => {
            json!({ "fenced": state.node, "was_leader": was_leader, "term": term.0 })
        }
        other => json!({ "error": format!("unexpected answer {other:?}") }),
    };
    (code(&response), Json(body))
}

/// A peer's probe: this node's term, role, last entry and leader.
pub async fn probe(State(state): State<Arc<AdminState>>) -> Json<ProbeJson> {
    Json(ProbeJson::from(&state.view.role.borrow().probe))
}

#[derive(Deserialize)]
pub struct ClaimQuery {
    candidate: String,
    term: u64,
    #[serde(default)]
    force: bool,
    last_term: Option<u64>,
    last_index: Option<u64>,
}

/// A peer claims a term: the vote, once this node persisted it.
pub async fn claim(State(state): State<Arc<AdminState>>, headers: HeaderMap, Query(q): Query<ClaimQuery>) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    let last = match (q.last_term, q.last_index) {
        (Some(term), Some(index)) => Some(EntryId { term: Term(term), index: Index(index) }),
        _ => None,
    };
    let claim = Claim { candidate: q.candidate, term: Term(q.term), last, force: q.force };
    let (reply, vote) = oneshot::channel();
    if state.inbox.send(Input::Claim { claim, reply }).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, vote).await {
        Ok(Ok(vote)) => {
            let term = state.view.role.borrow().term;
            (StatusCode::OK, Json(serde_json::to_value(VoteJson::of(&vote, term)).unwrap_or_default()))
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "no vote"),
    }
}

#[derive(Deserialize)]
pub struct HandoverQuery {
    from: String,
    term: u64,
}

/// The leader, in a switchover, asks this node to promote itself.
pub async fn handover(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(q): Query<HandoverQuery>,
) -> Answer {
    if let Err(denied) = authorize(&state, &headers) {
        return denied;
    }
    match state.inbox.send(Input::Handover { from: q.from, term: Term(q.term) }) {
        Ok(()) => (StatusCode::OK, Json(json!({ "accepted": true }))),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
    }
}
