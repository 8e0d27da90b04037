//! The server's MLS delivery-service tables (ADR 0028).

use super::*;
use crate::{MlsGroupRow, MlsStore};

#[async_trait]
impl MlsStore for server::SqlServerStore {
    async fn put_key_packages(
        &self,
        device: &DeviceId,
        one_time: &[(String, Vec<u8>)],
        last_resort: Option<&(String, Vec<u8>)>,
        max: usize,
    ) -> Result<()> {
        let device = device.to_hex();
        let db = self.db();
        let mut tx = db.begin().await?;
        for (r, body) in one_time {
            sqlx::query(
                "INSERT INTO mls_key_packages (device, kp_ref, body, last_resort) VALUES ($1, $2, $3, 0)
                 ON CONFLICT (device, kp_ref) DO NOTHING",
            )
            .bind(device.as_str())
            .bind(r.as_str())
            .bind(body.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        if let Some((r, body)) = last_resort {
            sqlx::query("DELETE FROM mls_key_packages WHERE device = $1 AND last_resort = 1")
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO mls_key_packages (device, kp_ref, body, last_resort) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (device, kp_ref) DO UPDATE SET last_resort = 1",
            )
            .bind(device.as_str())
            .bind(r.as_str())
            .bind(body.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        // keep the newest `max` one-time packages (refs are random: keep by rowid order is
        // not portable, so the excess is cut by reference order, which is as good as any)
        let refs: Vec<String> = sqlx::query_scalar(
            "SELECT kp_ref FROM mls_key_packages WHERE device = $1 AND last_resort = 0 ORDER BY kp_ref",
        )
        .bind(device.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for r in refs.iter().skip(max) {
            sqlx::query("DELETE FROM mls_key_packages WHERE device = $1 AND kp_ref = $2")
                .bind(device.as_str())
                .bind(r.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn key_package_count(&self, device: &DeviceId) -> Result<(u32, bool)> {
        let device = device.to_hex();
        let rows: Vec<i64> =
            sqlx::query_scalar("SELECT last_resort FROM mls_key_packages WHERE device = $1")
                .bind(device.as_str())
                .fetch_all(&self.db().readers)
                .await?;
        let one_time = rows.iter().filter(|l| **l == 0).count() as u32;
        Ok((one_time, rows.iter().any(|l| *l != 0)))
    }

    async fn claim_key_package(&self, device: &DeviceId) -> Result<Option<Vec<u8>>> {
        let device = device.to_hex();
        let db = self.db();
        let mut tx = db.begin().await?;
        db.lock_key(&mut tx, &format!("mls-kp:{device}")).await?;
        let row = sqlx::query(
            "SELECT kp_ref, body, last_resort FROM mls_key_packages WHERE device = $1
             ORDER BY last_resort, kp_ref LIMIT 1",
        )
        .bind(device.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let r: String = row.try_get("kp_ref")?;
        let body: Vec<u8> = row.try_get("body")?;
        let last_resort: i64 = row.try_get("last_resort")?;
        if last_resort == 0 {
            sqlx::query("DELETE FROM mls_key_packages WHERE device = $1 AND kp_ref = $2")
                .bind(device.as_str())
                .bind(r.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(body))
    }

    async fn mls_group(&self, room: &RoomId) -> Result<Option<MlsGroupRow>> {
        let room = room.to_hex();
        let row = sqlx::query("SELECT epoch, state, stale_since FROM mls_groups WHERE room = $1")
            .bind(room.as_str())
            .fetch_optional(&self.db().readers)
            .await?;
        row.map(|r| {
            Ok(MlsGroupRow {
                epoch: u(r.try_get("epoch")?),
                state: r.try_get("state")?,
                stale_since: r.try_get::<Option<i64>, _>("stale_since")?.map(u),
            })
        })
        .transpose()
    }

    async fn mls_epoch(&self, room: &RoomId) -> Result<Option<(u64, Option<u64>)>> {
        let room = room.to_hex();
        let row = sqlx::query("SELECT epoch, stale_since FROM mls_groups WHERE room = $1")
            .bind(room.as_str())
            .fetch_optional(&self.db().readers)
            .await?;
        row.map(|r| {
            Ok((
                u(r.try_get("epoch")?),
                r.try_get::<Option<i64>, _>("stale_since")?.map(u),
            ))
        })
        .transpose()
    }

    async fn init_mls_group(&self, room: &RoomId, state: &[u8]) -> Result<bool> {
        let room = room.to_hex();
        let r = sqlx::query(
            "INSERT INTO mls_groups (room, epoch, state) VALUES ($1, 0, $2) ON CONFLICT (room) DO NOTHING",
        )
        .bind(room.as_str())
        .bind(state)
        .execute(&self.db().writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_mls_commit(
        &self,
        room: &RoomId,
        epoch: u64,
        commit: &[u8],
        state: &[u8],
        welcome: Option<&[u8]>,
        welcomed: &[DeviceId],
    ) -> Result<bool> {
        let room = room.to_hex();
        let db = self.db();
        let mut tx = db.begin().await?;
        let moved = sqlx::query(
            "UPDATE mls_groups SET epoch = $1, state = $2, stale_since = NULL
             WHERE room = $3 AND epoch = $4",
        )
        .bind(i(epoch + 1))
        .bind(state)
        .bind(room.as_str())
        .bind(i(epoch))
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO mls_commits (room, epoch, body) VALUES ($1, $2, $3)")
            .bind(room.as_str())
            .bind(i(epoch))
            .bind(commit)
            .execute(&mut *tx)
            .await?;
        if let Some(w) = welcome {
            for d in welcomed {
                sqlx::query(
                    "INSERT INTO mls_welcomes (device, room, epoch, body) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (device, room) DO UPDATE SET epoch = excluded.epoch, body = excluded.body",
                )
                .bind(d.to_hex())
                .bind(room.as_str())
                .bind(i(epoch + 1))
                .bind(w)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn mls_commits(
        &self,
        room: &RoomId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let room = room.to_hex();
        let rows = sqlx::query(
            "SELECT epoch, body FROM mls_commits WHERE room = $1 AND epoch >= $2 ORDER BY epoch LIMIT $3",
        )
        .bind(room.as_str())
        .bind(i(from))
        .bind(limit as i64)
        .fetch_all(&self.db().readers)
        .await?;
        rows.iter()
            .map(|r| Ok((u(r.try_get("epoch")?), r.try_get("body")?)))
            .collect()
    }

    async fn set_mls_stale_since(
        &self,
        room: &RoomId,
        epoch: u64,
        since: Option<u64>,
    ) -> Result<()> {
        let room = room.to_hex();
        sqlx::query("UPDATE mls_groups SET stale_since = $1 WHERE room = $2 AND epoch = $3")
            .bind(since.map(i))
            .bind(room.as_str())
            .bind(i(epoch))
            .execute(&self.db().writer)
            .await?;
        Ok(())
    }

    async fn mls_welcomes(&self, device: &DeviceId) -> Result<Vec<(RoomId, u64, Vec<u8>)>> {
        let device = device.to_hex();
        let rows = sqlx::query(
            "SELECT room, epoch, body FROM mls_welcomes WHERE device = $1 ORDER BY room",
        )
        .bind(device.as_str())
        .fetch_all(&self.db().readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    room_id(&r.try_get::<String, _>("room")?)?,
                    u(r.try_get("epoch")?),
                    r.try_get("body")?,
                ))
            })
            .collect()
    }

    async fn delete_mls_welcome(&self, device: &DeviceId, room: &RoomId) -> Result<()> {
        sqlx::query("DELETE FROM mls_welcomes WHERE device = $1 AND room = $2")
            .bind(device.to_hex())
            .bind(room.to_hex())
            .execute(&self.db().writer)
            .await?;
        Ok(())
    }
}
