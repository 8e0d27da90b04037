//! Rooms' membership logs as the KM verifies and keeps them.

use super::*;

impl Km {
    pub(crate) async fn room_state(&self, room: &RoomId) -> Result<Option<Arc<RoomState>>, Denied> {
        if let Some(s) = self.rooms.lock().ok().and_then(|m| m.get(room).cloned()) {
            return Ok(Some(s));
        }
        let Some(row) = self.store.get_room(room).await.map_err(store_err)? else {
            return Ok(None);
        };
        let s: Arc<RoomState> =
            Arc::new(serde_json::from_slice(&row.state).map_err(Denied::internal)?);
        if let Ok(mut m) = self.rooms.lock() {
            m.insert(*room, s.clone());
        }
        Ok(Some(s))
    }

    /// Verify and append log entries the KM does not have yet.
    pub(crate) async fn ingest(
        &self,
        room: &RoomId,
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<Option<Arc<RoomState>>, Denied> {
        if log.is_empty() {
            return self.room_state(room).await;
        }
        let _guard = self.ingest.lock(room).await;
        let current = self.room_state(room).await?;
        match self
            .verify_entries(room, current.clone(), log_from, log)
            .await?
        {
            None => Ok(current),
            Some(staged) => Ok(self.keep_verified(vec![staged]).await?.pop()),
        }
    }

    /// [`Km::ingest`] for many rooms at once (the KM's own statements
    /// across rooms): each room verified under its lock (taken in room
    /// order), every verified room stored in one transaction. A room whose
    /// entries are refused is answered with its error; the others go on.
    pub(crate) async fn ingest_many(
        &self,
        logs: &[(RoomId, u64, Vec<SignedStatement>)],
    ) -> Vec<(RoomId, Result<Arc<RoomState>, Denied>)> {
        let mut order: Vec<&(RoomId, u64, Vec<SignedStatement>)> = logs.iter().collect();
        order.sort_by_key(|(room, _, _)| *room);
        let mut guards = Vec::with_capacity(order.len());
        for (room, _, _) in &order {
            guards.push(self.ingest.lock(room).await);
        }
        let mut out = Vec::new();
        let mut staged = Vec::new();
        for (room, from, log) in order {
            let verified = match self.room_state(room).await {
                Ok(current) => self.verify_entries(room, current, *from, log).await,
                Err(e) => Err(e),
            };
            match verified {
                Ok(Some(s)) => staged.push(s),
                Ok(None) => match self.room_state(room).await {
                    Ok(Some(st)) => out.push((*room, Ok(st))),
                    Ok(None) => out.push((*room, Err(Denied::internal("room vanished")))),
                    Err(e) => out.push((*room, Err(e))),
                },
                Err(e) => out.push((*room, Err(e))),
            }
        }
        let rooms: Vec<RoomId> = staged.iter().map(|s| s.room).collect();
        match self.keep_verified(staged).await {
            Ok(states) => out.extend(rooms.into_iter().zip(states.into_iter().map(Ok))),
            Err(e) => out.extend(rooms.into_iter().map(|r| (r, Err(e.clone())))),
        }
        drop(guards);
        out
    }

    /// Check `log` (entries from `log_from`) against the room's state:
    /// entries the KM has must be the very ones it verified (fork
    /// detection); new ones must pass the policy, the actor's standing and
    /// the controls. `None`: nothing new.
    async fn verify_entries(
        &self,
        room: &RoomId,
        current: Option<Arc<RoomState>>,
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<Option<Verified>, Denied> {
        if log.len() > limits::MAX_LOG_BATCH {
            return Err(Denied::too_large(format!(
                "at most {} log entries per request",
                limits::MAX_LOG_BATCH
            )));
        }
        let known_next = current.as_ref().map_or(0, |s| s.seq + 1);
        if log_from > known_next {
            return Err(Denied::conflict(
                "log_behind",
                format!(
                    "the KM has this room's log up to seq {}; send entries from {known_next}",
                    known_next as i64 - 1
                ),
            ));
        }
        let mut state = current.as_deref().cloned();
        let rules = self.rules();
        let mut new_rows = Vec::new();
        let mut accepted = Vec::new();
        for (i, entry) in log.iter().enumerate() {
            let seq = log_from + i as u64;
            let hash = cloister_crypto::signed::entry_hash(entry);
            if seq < known_next {
                // Already verified: it must be the very same entry (fork detection).
                let stored = self
                    .store
                    .room_log_hash(room, seq)
                    .await
                    .map_err(store_err)?;
                if stored.as_deref() != Some(&hash[..]) {
                    tracing::warn!(%room, seq, "membership log fork detected");
                    return Err(Denied::conflict(
                        "log_fork",
                        format!(
                            "entry {seq} differs from the one the KM verified earlier: the log was forked or rewritten"
                        ),
                    ));
                }
                continue;
            }
            let peek = cloister_crypto::signed::peek_statement(entry)
                .map_err(|e| Denied::malformed("bad_statement", e.to_string()))?;
            // The home KM's own statements (evictions, bans, locks) carry
            // its key; other firms' devices are checked under their firm's
            // pinned key.
            let home = state.as_ref().map(|s| s.tenant.clone());
            let (actor_user, actor_pk) = self
                .actor_of(home.as_ref(), entry, &peek.actor)
                .await
                .map_err(|e| {
                    Denied::forbidden(
                        "bad_statement",
                        format!("membership statement {seq} rejected: actor {}", e.message),
                    )
                })?;
            let (next, st) =
                match cloister_policy::apply(state.as_ref(), room, entry, &actor_user, &actor_pk) {
                    Ok(x) => x,
                    Err(e) => {
                        let why = format!("membership statement {seq} rejected: {e}");
                        return Err(self
                            .rejected(room, seq, &actor_user, &e.to_string(), "bad_statement", why)
                            .await);
                    }
                };
            // Users of several firms: an IM or an external room, and a
            // connection, checked under the keys this firm pinned, for
            // every user of another firm the statement brings in.
            let crossed = {
                let keys_of = |t: &TenantId| self.firm_key(t);
                cloister_policy::federation::check_step(state.as_ref(), &st, &next, &keys_of)
            };
            if let Err(e) = crossed {
                return Err(self
                    .rejected(
                        room,
                        seq,
                        &actor_user,
                        &e.to_string(),
                        e.code(),
                        e.to_string(),
                    )
                    .await);
            }
            // Controls judge what is being done now; an entry from before
            // (the server checks each entry's time when it appends it) is
            // history, and a room that breaks a barrier gets no keys anyway.
            // This firm's controls judge this firm's users.
            if cloister_proto::within_skew(st.ts)
                && let Err(r) = rules.check_step(&self.tenant, state.as_ref(), &st, &next)
            {
                return Err(self
                    .refused("membership", &actor_user, Some(*room), r)
                    .await);
            }
            accepted.push((seq, st.actor_user.clone(), op_name(&st.action)));
            new_rows.push(LogRow {
                seq,
                entry: serde_json::to_vec(entry).map_err(Denied::internal)?,
                hash: hash.to_vec(),
            });
            state = Some(next);
        }
        let Some(state) = state else {
            return Ok(None);
        };
        if new_rows.is_empty() {
            return Ok(None);
        }
        // A KM keeps the rooms of its firm: homed here, or with (or once
        // with) a user of this firm.
        if state.tenant != self.tenant && !state.grants.keys().any(|u| u.tenant() == self.tenant) {
            return Err(Denied::forbidden(
                "wrong_tenant",
                format!("room {room} has never had a user of {}", self.tenant),
            ));
        }
        Ok(Some(Verified {
            room: *room,
            expected_seq: current.as_ref().map(|s| s.seq),
            rows: new_rows,
            state,
            accepted,
        }))
    }

    /// A refused log entry: logged, audited (`membership_rejected`), and
    /// answered with `code` and `message`.
    async fn rejected(
        &self,
        room: &RoomId,
        seq: u64,
        actor: &UserId,
        reason: &str,
        code: &'static str,
        message: String,
    ) -> Denied {
        tracing::warn!(%room, seq, error = %reason, "membership statement rejected");
        if let Err(e) = self
            .record(
                Some(actor),
                AuditEvent::MembershipRejected {
                    room: *room,
                    seq,
                    reason: reason.to_owned(),
                },
            )
            .await
        {
            return e;
        }
        Denied::forbidden(code, message)
    }

    /// Store verified rooms in one transaction, then audit each accepted
    /// entry (the records are appended together) and cache the states.
    async fn keep_verified(&self, staged: Vec<Verified>) -> Result<Vec<Arc<RoomState>>, Denied> {
        if staged.is_empty() {
            return Ok(Vec::new());
        }
        let states: Vec<Vec<u8>> = staged
            .iter()
            .map(|v| serde_json::to_vec(&v.state).map_err(Denied::internal))
            .collect::<Result<_, Denied>>()?;
        let batch: Vec<cloister_store::RoomAppend<'_>> = staged
            .iter()
            .zip(&states)
            .map(|(v, state)| cloister_store::RoomAppend {
                room: &v.room,
                expected_seq: v.expected_seq,
                entries: &v.rows,
                state,
                members: &[],
            })
            .collect();
        self.store.append_logs(&batch).await.map_err(store_err)?;
        let records = staged.iter().flat_map(|v| {
            v.accepted.iter().map(move |(seq, actor_user, op)| {
                self.record(
                    Some(actor_user),
                    AuditEvent::MembershipAccepted {
                        room: v.room,
                        seq: *seq,
                        actor_user: actor_user.clone(),
                        op: (*op).into(),
                    },
                )
            })
        });
        for r in futures_util::future::join_all(records).await {
            r?;
        }
        let mut out = Vec::with_capacity(staged.len());
        for v in staged {
            let state = Arc::new(v.state);
            if let Ok(mut m) = self.rooms.lock() {
                m.insert(v.room, state.clone());
            }
            out.push(state);
        }
        Ok(out)
    }
}

/// A room's entries verified by the KM, not yet stored.
pub(crate) struct Verified {
    room: RoomId,
    expected_seq: Option<u64>,
    rows: Vec<LogRow>,
    state: RoomState,
    accepted: Vec<(u64, UserId, &'static str)>,
}

pub(crate) fn op_name(a: &cloister_proto::room::Action) -> &'static str {
    a.name()
}
