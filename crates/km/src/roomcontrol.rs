//! Statements the KM signs into rooms' logs itself: evictions when an
//! information barrier now applies, and compliance officers' bans, locks and
//! unlocks. The KM extends the head it verified; if the server's log moved
//! on, it reads the new entries (a KM-signed query), verifies them like any
//! others, and signs again.
//!
//! ```text
//!  officer ──RoomLock/RoomUnlock/RoomBan──▶ KM ──signed Lock{by, justification}──▶ server log
//!  barrier added / groups changed ──sweep──▶ for each room: to_evict ──Evict{user, reason}──▶ server log
//! ```

use super::*;
use cloister_proto::km::{BarrierAdded, Eviction, RoomControlResponse};
use cloister_proto::room::SignedStatement;
use cloister_proto::room::{Action, KM_DEVICE, Statement};
use cloister_proto::server::{
    AppendLog, AppendLogResponse, KmAppendBatch, KmAppendBatchResponse, KmLogQuery, LogPage,
};

/// One room's evictions, signed and checked, ready to send.
struct Planned {
    room: RoomId,
    /// Seq of the first entry.
    from: u64,
    entries: Vec<SignedStatement>,
    evictions: Vec<Eviction>,
    walled: Vec<cloister_policy::barriers::Walled>,
}

/// What became of a batch: done, failed, and rooms to retry one by one.
#[derive(Default)]
struct BatchResult {
    done: Vec<Eviction>,
    failed: Vec<String>,
    retry: Vec<(RoomId, Vec<cloister_policy::barriers::Walled>)>,
}

/// Rounds of catching up with a moving log before giving up.
const ATTEMPTS: usize = 5;

impl Km {
    fn server_url(&self) -> Result<String, Denied> {
        self.notifier.server().ok_or_else(|| {
            Denied::unavailable(
                "no_server",
                "the KM does not know the messaging server (serve it with --server URL)",
            )
        })
    }

    /// The KM's HTTP client to the messaging server.
    pub(crate) fn km_http(&self) -> reqwest::Client {
        self.directory
            .http
            .get_or_init(|| {
                cloister_tls::http_builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Sign `action` into `room`'s log at the server and verify it here.
    pub(crate) async fn km_statement(
        &self,
        room: &RoomId,
        action: Action,
    ) -> Result<Arc<RoomState>, Denied> {
        let server = self.server_url()?;
        let http = self.km_http();
        for _ in 0..ATTEMPTS {
            let state = self.room_state(room).await?.ok_or_else(|| {
                Denied::not_found(
                    "unknown_room",
                    format!("the KM has no verified log for room {room}"),
                )
            })?;
            let st = Statement {
                room: *room,
                seq: state.seq + 1,
                prev: Fixed(state.head),
                actor: KM_DEVICE,
                actor_user: cloister_policy::km_user(&self.tenant),
                ts: now_millis(),
                action: action.clone(),
                connections: Vec::new(),
            };
            let entry = cloister_crypto::signed::sign_statement_km(&self.signer, &st)
                .map_err(Denied::internal)?;
            // refuse here what the log would refuse (not a member, not locked…)
            cloister_policy::apply(
                Some(&state),
                room,
                &entry,
                &st.actor_user,
                &self.signer.public(),
            )
            .map_err(|e| Denied::conflict("policy", e.to_string()))?;
            let r = http
                .post(format!("{server}/v1/km/rooms/{room}/log"))
                .json(&AppendLog {
                    entry: entry.clone(),
                })
                .send()
                .await
                .map_err(|e| Denied::unavailable("server_unreachable", e.to_string()))?;
            match r.status().as_u16() {
                200 => {
                    let _: AppendLogResponse = r.json().await.map_err(Denied::internal)?;
                    let next = self
                        .ingest(room, st.seq, std::slice::from_ref(&entry))
                        .await?
                        .ok_or_else(|| Denied::internal("room vanished"))?;
                    return Ok(next);
                }
                409 => self.catch_up(&http, &server, room, state.seq + 1).await?,
                s => {
                    let b: cloister_proto::ErrorBody = r.json().await.map_err(Denied::internal)?;
                    return Err(Denied::conflict(
                        "server_refused",
                        format!(
                            "the server refused the KM's statement ({s} {}): {}",
                            b.error, b.message
                        ),
                    ));
                }
            }
        }
        Err(Denied::unavailable(
            "log_busy",
            format!("room {room}'s log kept moving; try again"),
        ))
    }

    /// Read and verify the server's entries from `from` (the KM's log lags).
    pub(crate) async fn catch_up(
        &self,
        http: &reqwest::Client,
        server: &str,
        room: &RoomId,
        from: u64,
    ) -> Result<(), Denied> {
        let q = KmLogQuery {
            tenant: self.tenant.clone(),
            room: *room,
            from,
            ts: now_millis(),
        };
        let signed = cloister_crypto::signed::km_sign_blob(
            &self.signer,
            cloister_crypto::signed::KM_QUERY,
            &q,
        )
        .map_err(Denied::internal)?;
        let r = http
            .post(format!("{server}/v1/km/rooms/{room}/log-read"))
            .json(&signed)
            .send()
            .await
            .map_err(|e| Denied::unavailable("server_unreachable", e.to_string()))?;
        if !r.status().is_success() {
            return Err(Denied::unavailable(
                "server_refused",
                format!(
                    "the server would not show room {room}'s log ({})",
                    r.status()
                ),
            ));
        }
        let page: LogPage = r.json().await.map_err(Denied::internal)?;
        self.ingest(room, from, &page.entries).await?;
        Ok(())
    }

    /// Compliance officers' actions on a room.
    pub(crate) async fn room_control_op(
        &self,
        cert: &DeviceCert,
        op: KmOp,
    ) -> Result<serde_json::Value, Denied> {
        self.need(cert, Role::Compliance, "locking, unlocking and banning")?;
        let (room, action, user, justification) = match op {
            KmOp::RoomLock {
                room,
                justification,
            } => (
                room,
                Action::Lock {
                    by: cert.user.clone(),
                    justification: justification.clone(),
                },
                None,
                justification,
            ),
            KmOp::RoomUnlock {
                room,
                justification,
            } => (
                room,
                Action::Unlock {
                    by: cert.user.clone(),
                    justification: justification.clone(),
                },
                None,
                justification,
            ),
            KmOp::RoomBan {
                room,
                user,
                justification,
            } => (
                room,
                Action::Ban {
                    user: user.clone(),
                    by: cert.user.clone(),
                    justification: justification.clone(),
                },
                Some(user),
                justification,
            ),
            _ => return Err(Denied::internal("not a room control op")),
        };
        if justification.trim().is_empty() || justification.len() > 1000 {
            return Err(Denied::malformed(
                "justification_required",
                "a justification of 1 to 1000 bytes is required",
            ));
        }
        let name = action.name();
        let st = self.km_statement(&room, action).await?;
        self.record(
            Some(&cert.user),
            AuditEvent::RoomControl {
                room,
                seq: st.seq,
                action: name.into(),
                user,
                by: Some(cert.user.clone()),
                reason: justification,
            },
        )
        .await?;
        json(&RoomControlResponse {
            room,
            seq: st.seq,
            epoch: st.epoch,
        })
    }

    /// Move everyone a barrier now separates out of every room the KM
    /// knows (owners are kept first). Evictions that could not be delivered
    /// are returned as `pending` (the notifier's next sweep retries).
    pub(crate) async fn evict_walled(&self) -> (Vec<Eviction>, Vec<String>) {
        use futures_util::StreamExt;
        let _one = self.directory.sweep.lock().await;
        // the version first: a change after it makes the next sweep run
        let version = self.dir().version;
        let rules = self.rules();
        let mut pending: Vec<String> = Vec::new();
        let rooms = match self.store.list_rooms().await {
            Ok(r) => r,
            Err(e) => return (Vec::new(), vec![format!("cannot list rooms: {e}")]),
        };
        // who leaves which room (owners kept first)
        let mut todo: Vec<(RoomId, Vec<cloister_policy::barriers::Walled>)> = Vec::new();
        for row in rooms {
            let room = row.room;
            let Ok(Some(state)) = self.room_state(&room).await else {
                continue;
            };
            // only the home KM signs a room's evictions; in a room homed at
            // another firm this firm's walled users get no keys instead
            if state.tenant != self.tenant {
                continue;
            }
            let mut order: Vec<UserId> = state.owners.iter().cloned().collect();
            order.extend(
                state
                    .members
                    .iter()
                    .filter(|m| !state.owners.contains(*m))
                    .cloned(),
            );
            let walled = rules.barriers().to_evict(&order);
            if !walled.is_empty() {
                todo.push((room, walled));
            }
        }
        // sign every eviction here, chained on the KM's verified heads, and
        // send them in batches: one transaction per batch at the server and
        // here. A room whose log moved on meanwhile goes the one-room way
        // (catch up, sign again).
        let mut planned: Vec<Planned> = Vec::new();
        let mut one_by_one: Vec<(RoomId, Vec<cloister_policy::barriers::Walled>)> = Vec::new();
        for (room, walled) in todo {
            match self.plan_evictions(&room, &walled).await {
                Ok(Some(p)) => planned.push(p),
                Ok(None) => {}
                Err(_) => one_by_one.push((room, walled)),
            }
        }
        let mut chunks: Vec<Vec<Planned>> = Vec::new();
        let mut size = 0;
        for p in planned {
            if chunks.is_empty() || size + p.entries.len() > limits::MAX_KM_BATCH {
                chunks.push(Vec::new());
                size = 0;
            }
            size += p.entries.len();
            if let Some(c) = chunks.last_mut() {
                c.push(p);
            }
        }
        let results: Vec<BatchResult> = futures_util::stream::iter(chunks)
            .map(|c| self.evict_batch(c))
            .buffer_unordered(2)
            .collect()
            .await;
        let mut done = Vec::new();
        for r in results {
            done.extend(r.done);
            pending.extend(r.failed);
            one_by_one.extend(r.retry);
        }
        // rooms in parallel (their logs are independent), members of one
        // room in order
        let results: Vec<(Vec<Eviction>, Vec<String>)> = futures_util::stream::iter(one_by_one)
            .map(|(room, walled)| self.evict_in_room(room, walled))
            .buffer_unordered(16)
            .collect()
            .await;
        for (d, f) in results {
            done.extend(d);
            pending.extend(f);
        }
        done.sort_by(|a, b| (a.room, &a.user).cmp(&(b.room, &b.user)));
        if pending.is_empty() {
            self.directory
                .swept
                .fetch_max(version, std::sync::atomic::Ordering::AcqRel);
        }
        (done, pending)
    }

    /// Has a complete sweep run on the current directory version?
    pub(crate) fn swept_current(&self) -> bool {
        self.directory
            .swept
            .load(std::sync::atomic::Ordering::Acquire)
            >= self.dir().version
    }

    /// The KM's evict statements for one room, signed and checked against
    /// its verified state (`None`: nobody is left to evict).
    async fn plan_evictions(
        &self,
        room: &RoomId,
        walled: &[cloister_policy::barriers::Walled],
    ) -> Result<Option<Planned>, Denied> {
        let Some(mut state) = self.room_state(room).await? else {
            return Ok(None);
        };
        let from = state.seq + 1;
        let km_user = cloister_policy::km_user(&self.tenant);
        let mut entries = Vec::new();
        let mut evictions = Vec::new();
        for w in walled {
            let reason = w.to_string();
            let st = Statement {
                room: *room,
                seq: state.seq + 1,
                prev: Fixed(state.head),
                actor: KM_DEVICE,
                actor_user: km_user.clone(),
                ts: now_millis(),
                action: Action::Evict {
                    user: w.user.clone(),
                    reason: reason.clone(),
                },
                connections: Vec::new(),
            };
            let entry = cloister_crypto::signed::sign_statement_km(&self.signer, &st)
                .map_err(Denied::internal)?;
            // gone already (left, removed): nothing to do
            let Ok((next, _)) =
                cloister_policy::apply(Some(&state), room, &entry, &km_user, &self.signer.public())
            else {
                continue;
            };
            state = Arc::new(next);
            entries.push(entry);
            evictions.push(Eviction {
                room: *room,
                user: w.user.clone(),
                reason,
            });
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(Planned {
            room: *room,
            from,
            entries,
            evictions,
            walled: walled.to_vec(),
        }))
    }

    /// Append planned evictions of many rooms at the server in one request,
    /// then verify and keep them here in one transaction.
    async fn evict_batch(&self, chunk: Vec<Planned>) -> BatchResult {
        let mut r = BatchResult::default();
        let sent = match self.server_url() {
            Ok(server) => {
                let entries: Vec<SignedStatement> = chunk
                    .iter()
                    .flat_map(|p| p.entries.iter().cloned())
                    .collect();
                let resp = self
                    .km_http()
                    .post(format!("{server}/v1/km/log"))
                    .json(&KmAppendBatch { entries })
                    .send()
                    .await;
                match resp {
                    Ok(x) if x.status().is_success() => {
                        x.json::<KmAppendBatchResponse>().await.ok()
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(sent) = sent else {
            // the one-room way will say what is wrong
            r.retry
                .extend(chunk.into_iter().map(|p| (p.room, p.walled)));
            return r;
        };
        let mut accepted = Vec::new();
        let mut kept = Vec::new();
        let mut outcomes = sent.results.iter();
        for p in chunk {
            let mine: Vec<_> = outcomes.by_ref().take(p.entries.len()).collect();
            let all_in = mine.len() == p.entries.len()
                && mine.iter().all(|o| o.error.is_none() && o.room == p.room);
            if all_in {
                accepted.push((p.room, p.from, p.entries.clone()));
                kept.push(p);
            } else {
                r.retry.push((p.room, p.walled));
            }
        }
        let verified = self.ingest_many(&accepted).await;
        let ok: std::collections::BTreeSet<RoomId> = verified
            .iter()
            .filter_map(|(room, v)| match v {
                Ok(_) => Some(*room),
                Err(e) => {
                    r.failed.push(format!("{room}: {e}"));
                    None
                }
            })
            .collect();
        let kept: Vec<Planned> = kept.into_iter().filter(|p| ok.contains(&p.room)).collect();
        let records = kept.iter().flat_map(|p| {
            let from = p.from;
            p.evictions.iter().enumerate().map(move |(i, e)| {
                self.record(
                    None,
                    AuditEvent::RoomControl {
                        room: e.room,
                        seq: from + i as u64,
                        action: "evict".into(),
                        user: Some(e.user.clone()),
                        by: None,
                        reason: e.reason.clone(),
                    },
                )
            })
        });
        for (res, e) in futures_util::future::join_all(records)
            .await
            .into_iter()
            .zip(kept.iter().flat_map(|p| p.evictions.iter()))
        {
            if let Err(x) = res {
                r.failed.push(format!("{}: audit: {x}", e.room));
            }
        }
        for p in kept {
            for e in &p.evictions {
                tracing::info!(room = %e.room, user = %e.user, "evicted by an information barrier");
            }
            r.done.extend(p.evictions);
        }
        r
    }

    /// Evict the walled members of one room, one statement at a time.
    async fn evict_in_room(
        &self,
        room: RoomId,
        walled: Vec<cloister_policy::barriers::Walled>,
    ) -> (Vec<Eviction>, Vec<String>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for w in walled {
            let reason = w.to_string();
            let action = Action::Evict {
                user: w.user.clone(),
                reason: reason.clone(),
            };
            match self.km_statement(&room, action).await {
                Ok(st) => {
                    if let Err(e) = self
                        .record(
                            None,
                            AuditEvent::RoomControl {
                                room,
                                seq: st.seq,
                                action: "evict".into(),
                                user: Some(w.user.clone()),
                                by: None,
                                reason: reason.clone(),
                            },
                        )
                        .await
                    {
                        failed.push(format!("{room}: audit: {e}"));
                    }
                    tracing::info!(%room, user = %w.user, "evicted by an information barrier");
                    done.push(Eviction {
                        room,
                        user: w.user,
                        reason,
                    });
                }
                // gone already (left, removed): nothing to do
                Err(e) if e.code == "policy" => {}
                Err(e) => failed.push(format!("{room}: {}: {e}", w.user)),
            }
        }
        (done, failed)
    }

    pub(crate) async fn barrier_added(
        &self,
        info: cloister_proto::km::BarrierInfo,
    ) -> BarrierAdded {
        let (evicted, pending) = if self.notifier.server().is_some() {
            self.evict_walled().await
        } else {
            (
                Vec::new(),
                vec!["the KM does not know the messaging server: evictions wait; keys are refused meanwhile".into()],
            )
        };
        BarrierAdded {
            barrier: info,
            evicted,
            pending,
        }
    }
}
