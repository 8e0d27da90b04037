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
use cloister_proto::room::{Action, KM_DEVICE, Statement};
use cloister_proto::server::{AppendLog, AppendLogResponse, KmLogQuery, LogPage};

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

    /// Sign `action` into `room`'s log at the server and verify it here.
    pub(crate) async fn km_statement(
        &self,
        room: &RoomId,
        action: Action,
    ) -> Result<Arc<RoomState>, Denied> {
        let server = self.server_url()?;
        let http = self
            .directory
            .http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
                    .unwrap_or_default()
            })
            .clone();
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
    async fn catch_up(
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
        let rules = self.rules();
        let mut pending = Vec::new();
        let rooms = match self.store.list_rooms().await {
            Ok(r) => r,
            Err(e) => return (Vec::new(), vec![format!("cannot list rooms: {e}")]),
        };
        // who leaves which room (owners kept first)
        let mut todo: Vec<(RoomId, Vec<cloister_policy::barriers::Walled>)> = Vec::new();
        for row in rooms {
            let Ok(room) = row.room.parse::<RoomId>() else {
                continue;
            };
            let Ok(Some(state)) = self.room_state(&room).await else {
                continue;
            };
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
        // rooms in parallel (their logs are independent), members of one
        // room in order
        let results: Vec<(Vec<Eviction>, Vec<String>)> = futures_util::stream::iter(todo)
            .map(|(room, walled)| async move {
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
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut done = Vec::new();
        for (d, f) in results {
            done.extend(d);
            pending.extend(f);
        }
        done.sort_by(|a, b| (a.room, &a.user).cmp(&(b.room, &b.user)));
        (done, pending)
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
