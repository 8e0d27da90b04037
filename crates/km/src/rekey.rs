//! A room's key rotated in an emergency: the KM signs a `rekey` into the
//! room's log (a new epoch now, members unchanged).

use super::*;
use cloister_proto::km::RoomControlResponse;
use cloister_proto::room::Action;

impl Km {
    /// Emergency rotation of a room's key: a new epoch now. For the firm's
    /// admins and compliance officers, and the room's owners; only the
    /// room's home KM signs into its log.
    pub(crate) async fn room_rekey(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        reason: String,
    ) -> Result<RoomControlResponse, Denied> {
        if reason.trim().is_empty() || reason.len() > 1000 {
            return Err(Denied::malformed(
                "reason_required",
                "a reason of 1 to 1000 bytes is required",
            ));
        }
        let state = self.room_state(room).await?.ok_or_else(|| {
            Denied::not_found(
                "unknown_room",
                format!("the KM has no verified log for room {room}"),
            )
        })?;
        let staff = cert.roles.contains(&Role::Admin) || cert.roles.contains(&Role::Compliance);
        if !staff && !state.owners.contains(&cert.user) {
            return Err(Denied::forbidden(
                "not_allowed",
                "a room's key is rotated by its owners, an admin or a compliance officer",
            ));
        }
        if state.tenant != self.tenant {
            return Err(Denied::forbidden(
                "not_home",
                format!(
                    "room {room} is homed at {}: its KM rotates its key",
                    state.tenant
                ),
            ));
        }
        let from = state.epoch;
        let action = Action::Rekey {
            by: cert.user.clone(),
            reason: reason.clone(),
        };
        let st = self.km_statement(room, action).await?;
        tracing::warn!(%room, from, to = st.epoch, "room key rotated");
        self.record(
            Some(&cert.user),
            AuditEvent::RoomControl {
                room: *room,
                seq: st.seq,
                action: "rekey".into(),
                user: None,
                by: Some(cert.user.clone()),
                reason,
            },
        )
        .await?;
        Ok(RoomControlResponse {
            room: *room,
            seq: st.seq,
            epoch: st.epoch,
        })
    }
}
