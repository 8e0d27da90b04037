//! Room freshness: the KM's signed head of a room's verified log, and the
//! verified entries themselves, for devices whose server withholds them.

use crate::error::Denied;
use crate::{Km, json, store_err};
use cloister_crypto::signed::{self, km_sign_blob};
use cloister_policy::RoomState;
use cloister_proto::b64::Fixed;
use cloister_proto::km::{
    DeviceCert, Role, RoomHead, RoomHeadResponse, RoomLogResponse, SignedBlob,
};
use cloister_proto::room::SignedStatement;
use cloister_proto::{RoomId, limits, now_millis};

/// How long a signed room head is handed out again while the room does not
/// change (devices accept heads up to 60 s old): one signature for a burst
/// of key releases.
const HEAD_REUSE_MS: u64 = 1_000;

/// A room's signed head: (seq, head, issued, signed blob).
pub(crate) type CachedHead = (u64, [u8; 32], u64, cloister_proto::km::SignedBlob);

impl Km {
    /// The KM-signed head of a verified room state.
    pub(crate) fn signed_head(&self, st: &RoomState) -> Result<SignedBlob, Denied> {
        let now = now_millis();
        if let Ok(m) = self.heads.lock()
            && let Some((seq, head, issued, blob)) = m.get(&st.room)
            && (*seq, *head) == (st.seq, st.head)
            && now.saturating_sub(*issued) < HEAD_REUSE_MS
        {
            return Ok(blob.clone());
        }
        let h = RoomHead {
            tenant: self.tenant.clone(),
            room: st.room,
            seq: st.seq,
            head: Fixed(st.head),
            epoch: st.epoch,
            issued_ms: now,
        };
        let blob = km_sign_blob(&self.signer, signed::ROOM_HEAD, &h).map_err(Denied::internal)?;
        if let Ok(mut m) = self.heads.lock() {
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert(st.room, (st.seq, st.head, now, blob.clone()));
        }
        Ok(blob)
    }

    /// Anyone who ever held a grant in the room, the tenant's surveillance,
    /// and anyone of the tenant for a public room (joining needs its head).
    fn may_follow(cert: &DeviceCert, st: &RoomState) -> Result<(), Denied> {
        if st.grants.contains_key(&cert.user)
            || ((cert.roles.contains(&Role::Surveillance) || cert.roles.contains(&Role::Inspector))
                && st.tenant == cert.tenant)
            || (st.settings.public && st.tenant == cert.tenant)
        {
            return Ok(());
        }
        Err(Denied::not_found(
            "unknown_room",
            format!("no room {} that you were ever a member of", st.room),
        ))
    }

    pub(crate) async fn room_head(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        log_from: u64,
        log: &[SignedStatement],
    ) -> Result<serde_json::Value, Denied> {
        let st = self.ingest(room, log_from, log).await?.ok_or_else(|| {
            Denied::not_found(
                "unknown_room",
                format!("the KM has no verified log for room {room}; send it"),
            )
        })?;
        Self::may_follow(cert, &st)?;
        json(&RoomHeadResponse {
            head: self.signed_head(&st)?,
        })
    }

    pub(crate) async fn room_log(
        &self,
        cert: &DeviceCert,
        room: &RoomId,
        from: u64,
    ) -> Result<serde_json::Value, Denied> {
        let st = self.room_state(room).await?.ok_or_else(|| {
            Denied::not_found("unknown_room", format!("the KM has no log for room {room}"))
        })?;
        Self::may_follow(cert, &st)?;
        let rows = self
            .store
            .room_log(room, from, limits::MAX_PAGE)
            .await
            .map_err(store_err)?;
        let entries = rows
            .iter()
            .map(|r| serde_json::from_slice(&r.entry))
            .collect::<Result<Vec<SignedStatement>, _>>()
            .map_err(Denied::internal)?;
        json(&RoomLogResponse { entries })
    }
}
