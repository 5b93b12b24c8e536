//! Pure device-mapper text: target tables, pool messages, status parsing, device ids and the
//! low-space rule. Kept free of I/O so every string the kernel sees is unit-tested.

use std::fmt;

/// dm-thin device ids are 24 bits wide: the kernel rejects anything at or above 2^24.
pub const MAX_DEV_ID: u64 = (1 << 24) - 1;

/// A block device as `major:minor`, the form dm tables name their underlying devices by (a path
/// would need udev's symlinks, which a minimal host or guest may not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNo {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of a dm table: `start length target params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLine {
    pub start: u64,
    pub length: u64,
    pub target: &'static str,
    pub params: String,
}

impl TableLine {
    pub fn as_tuple(&self) -> (u64, u64, String, String) {
        (
            self.start,
            self.length,
            self.target.to_string(),
            self.params.clone(),
        )
    }
}

impl fmt::Display for TableLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.start, self.length, self.target, self.params
        )
    }
}

/// The pool's geometry, derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Data device length in sectors, a whole number of blocks.
    pub data_sectors: u64,
    pub metadata_sectors: u64,
    pub block_sectors: u64,
    /// Free data blocks below which the kernel raises a dm event.
    pub low_water_blocks: u64,
}

/// dm-thin ignores metadata past this size (about 15.9 GiB); a bigger file only wastes space.
pub const MAX_METADATA_SECTORS: u64 = 255 * (1 << 14) * 8;

impl PoolGeometry {
    /// `max_used_percent` also sets the low-water mark: the kernel warns at the point fireclaw
    /// starts refusing new VMs.
    pub fn new(
        data_mib: u64,
        metadata_mib: u64,
        block_sectors: u64,
        max_used_percent: u8,
    ) -> Result<Self, GeometryError> {
        if block_sectors < 128 || !block_sectors.is_multiple_of(128) {
            return Err(GeometryError::BlockSize(block_sectors));
        }
        let data_sectors = data_mib.saturating_mul(2048) / block_sectors * block_sectors;
        let blocks = data_sectors / block_sectors;
        if blocks == 0 {
            return Err(GeometryError::DataTooSmall {
                data_mib,
                block_sectors,
            });
        }
        let metadata_sectors = metadata_mib.saturating_mul(2048);
        if !(4096..=MAX_METADATA_SECTORS).contains(&metadata_sectors) {
            return Err(GeometryError::Metadata(metadata_mib));
        }
        let free_percent = 100u64.saturating_sub(u64::from(max_used_percent.min(100)));
        let low_water_blocks = (blocks * free_percent / 100).max(1);
        Ok(PoolGeometry {
            data_sectors,
            metadata_sectors,
            block_sectors,
            low_water_blocks,
        })
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_sectors / self.block_sectors
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("thinpool.block_sectors = {0}: dm-thin needs a multiple of 128 sectors (64 KiB)")]
    BlockSize(u64),
    #[error("thinpool.data_mib = {data_mib} holds no whole block of {block_sectors} sectors; raise data_mib")]
    DataTooSmall { data_mib: u64, block_sectors: u64 },
    #[error("thinpool.metadata_mib = {0}: expected 2..=16320 MiB (dm-thin's limits)")]
    Metadata(u64),
}

/// The thin-pool table. Discards are passed down by default (freed blocks return to the sparse file
/// through the loop device); `error_if_no_space` makes a full pool fail writes at once instead of
/// queueing them for 60 s, so a guest sees an I/O error rather than a hang.
pub fn pool_table(meta: DevNo, data: DevNo, g: &PoolGeometry) -> TableLine {
    TableLine {
        start: 0,
        length: g.data_sectors,
        target: "thin-pool",
        params: format!(
            "{meta} {data} {} {} 1 error_if_no_space",
            g.block_sectors, g.low_water_blocks
        ),
    }
}

/// A thin device of `sectors` length over the pool device.
pub fn thin_table(pool: DevNo, dev_id: u64, sectors: u64) -> TableLine {
    TableLine {
        start: 0,
        length: sectors,
        target: "thin",
        params: format!("{pool} {dev_id}"),
    }
}

/// Messages to the pool (dm-thin's documented message interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMessage {
    CreateThin { id: u64 },
    CreateSnap { id: u64, origin: u64 },
    Delete { id: u64 },
}

impl fmt::Display for PoolMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolMessage::CreateThin { id } => write!(f, "create_thin {id}"),
            PoolMessage::CreateSnap { id, origin } => write!(f, "create_snap {id} {origin}"),
            PoolMessage::Delete { id } => write!(f, "delete {id}"),
        }
    }
}

/// What `fireclaw status` shows about the pool, from the kernel's status line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub transaction_id: u64,
    pub used_metadata_blocks: u64,
    pub total_metadata_blocks: u64,
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// `rw`, `ro` or `out_of_data_space`; `Fail` when the pool failed.
    pub mode: String,
    pub discard_passdown: bool,
    pub error_if_no_space: bool,
    pub needs_check: bool,
}

impl PoolUsage {
    pub fn data_percent(&self) -> f64 {
        percent(self.used_data_blocks, self.total_data_blocks)
    }

    pub fn metadata_percent(&self) -> f64 {
        percent(self.used_metadata_blocks, self.total_metadata_blocks)
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("the thin pool has failed (status \"Fail\"): check the kernel log, then run thin_check on the metadata file")]
    Failed,
    #[error("cannot parse thin-pool status {0:?}")]
    Unparsable(String),
}

/// Parses a thin-pool status line: `<transaction id> <used>/<total meta> <used>/<total data>
/// <held root> <mode> <discard> <no-space policy> <needs_check> ...`.
pub fn parse_pool_status(line: &str) -> Result<PoolUsage, StatusError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"Fail") {
        return Err(StatusError::Failed);
    }
    let bad = || StatusError::Unparsable(line.to_string());
    let fraction = |w: Option<&&str>| -> Result<(u64, u64), StatusError> {
        let (a, b) = w.ok_or_else(bad)?.split_once('/').ok_or_else(bad)?;
        Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
    };
    let transaction_id = words.first().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let (used_metadata_blocks, total_metadata_blocks) = fraction(words.get(1))?;
    let (used_data_blocks, total_data_blocks) = fraction(words.get(2))?;
    let mode = words.get(4).ok_or_else(bad)?.to_string();
    Ok(PoolUsage {
        transaction_id,
        used_metadata_blocks,
        total_metadata_blocks,
        used_data_blocks,
        total_data_blocks,
        mode,
        discard_passdown: words.get(5) == Some(&"discard_passdown"),
        error_if_no_space: words.get(6) == Some(&"error_if_no_space"),
        needs_check: words.get(7) == Some(&"needs_check"),
    })
}

/// The refusal rule for new VM disks: a pool past the threshold, or not writable, would turn into
/// guest I/O errors later.
pub fn check_space(usage: &PoolUsage, max_used_percent: u8) -> Result<(), SpaceError> {
    if usage.mode != "rw" {
        return Err(SpaceError::NotWritable {
            mode: usage.mode.clone(),
        });
    }
    let limit = f64::from(max_used_percent);
    if usage.data_percent() >= limit {
        return Err(SpaceError::DataFull {
            used: usage.data_percent(),
            limit: max_used_percent,
        });
    }
    if usage.metadata_percent() >= limit {
        return Err(SpaceError::MetadataFull {
            used: usage.metadata_percent(),
            limit: max_used_percent,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpaceError {
    #[error("thin pool data is {used:.1}% used, at or past thinpool.max_used_percent = {limit}%: refusing to start another VM; destroy idle VMs (`fireclaw gc` removes orphans) or raise thinpool.data_mib")]
    DataFull { used: f64, limit: u8 },
    #[error("thin pool metadata is {used:.1}% used, at or past thinpool.max_used_percent = {limit}%: refusing to start another VM; destroy idle VMs or raise thinpool.metadata_mib")]
    MetadataFull { used: f64, limit: u8 },
    #[error("thin pool is in mode {mode:?}, not read-write: refusing to start another VM; free space and check the kernel log")]
    NotWritable { mode: String },
}

/// The next device id: one above the highest in use, or, once that reaches dm-thin's limit, the
/// lowest unused. Ids are never reused while a row names them, even a row whose creation a crash
/// interrupted, so a half-created device can still be deleted by its id.
pub fn next_dev_id(used: &[u64]) -> Option<u64> {
    let max = used.iter().copied().max().unwrap_or(0);
    if max < MAX_DEV_ID {
        return Some(max + 1);
    }
    let mut sorted = used.to_vec();
    sorted.sort_unstable();
    let mut candidate = 1;
    for id in sorted {
        if id == candidate {
            candidate += 1;
        } else if id > candidate {
            break;
        }
    }
    (candidate <= MAX_DEV_ID).then_some(candidate)
}

/// dm names must be short and free of `/`; images and VM ids become part of them.
pub fn dm_name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: DevNo = DevNo { major: 7, minor: 1 };
    const DATA: DevNo = DevNo { major: 7, minor: 0 };

    #[test]
    fn pool_table_has_geometry_low_water_and_no_space_policy() {
        let g = PoolGeometry::new(1024, 64, 128, 90).unwrap();
        assert_eq!(g.data_sectors, 1024 * 2048);
        assert_eq!(g.data_blocks(), 16384);
        assert_eq!(g.low_water_blocks, 1638);
        assert_eq!(
            pool_table(META, DATA, &g).to_string(),
            "0 2097152 thin-pool 7:1 7:0 128 1638 1 error_if_no_space"
        );
    }

    #[test]
    fn data_length_is_rounded_down_to_whole_blocks() {
        // 3 MiB with 2 MiB blocks: one block.
        let g = PoolGeometry::new(3, 2, 4096, 90).unwrap();
        assert_eq!(g.data_sectors, 4096);
        assert_eq!(g.low_water_blocks, 1);
    }

    #[test]
    fn bad_geometry_is_refused_with_the_field_name() {
        assert_eq!(
            PoolGeometry::new(1024, 64, 100, 90),
            Err(GeometryError::BlockSize(100))
        );
        let e = PoolGeometry::new(1, 64, 4096, 90).unwrap_err();
        assert!(e.to_string().contains("thinpool.data_mib"), "{e}");
        let e = PoolGeometry::new(1024, 1, 128, 90).unwrap_err();
        assert!(e.to_string().contains("thinpool.metadata_mib"), "{e}");
        assert!(PoolGeometry::new(1024, 100_000, 128, 90).is_err());
    }

    #[test]
    fn thin_table_and_messages() {
        assert_eq!(
            thin_table(
                DevNo {
                    major: 253,
                    minor: 0
                },
                7,
                131072
            )
            .to_string(),
            "0 131072 thin 253:0 7"
        );
        assert_eq!(
            PoolMessage::CreateThin { id: 1 }.to_string(),
            "create_thin 1"
        );
        assert_eq!(
            PoolMessage::CreateSnap { id: 9, origin: 1 }.to_string(),
            "create_snap 9 1"
        );
        assert_eq!(PoolMessage::Delete { id: 9 }.to_string(), "delete 9");
    }

    #[test]
    fn status_line_parses() {
        let u =
            parse_pool_status("3 17/16384 100/1000 - rw discard_passdown error_if_no_space - 1024")
                .unwrap();
        assert_eq!(u.transaction_id, 3);
        assert_eq!(
            (u.used_metadata_blocks, u.total_metadata_blocks),
            (17, 16384)
        );
        assert_eq!((u.used_data_blocks, u.total_data_blocks), (100, 1000));
        assert!(u.discard_passdown && u.error_if_no_space && !u.needs_check);
        assert!((u.data_percent() - 10.0).abs() < 1e-9);
        assert_eq!(parse_pool_status("Fail"), Err(StatusError::Failed));
        assert!(matches!(
            parse_pool_status("3 x/y"),
            Err(StatusError::Unparsable(_))
        ));
        assert!(parse_pool_status("").is_err());
    }

    #[test]
    fn full_pool_is_refused_with_a_clear_message() {
        let mut u =
            parse_pool_status("0 10/1000 950/1000 - rw discard_passdown error_if_no_space - 0")
                .unwrap();
        let e = check_space(&u, 90).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("95.0% used") && text.contains("max_used_percent = 90"),
            "{text}"
        );
        u.used_data_blocks = 100;
        assert!(check_space(&u, 90).is_ok());
        u.used_metadata_blocks = 999;
        assert!(matches!(
            check_space(&u, 90),
            Err(SpaceError::MetadataFull { .. })
        ));
        u.used_metadata_blocks = 1;
        u.mode = "out_of_data_space".into();
        assert!(check_space(&u, 90)
            .unwrap_err()
            .to_string()
            .contains("out_of_data_space"));
    }

    #[test]
    fn ids_count_up_and_reuse_gaps_only_at_the_limit() {
        assert_eq!(next_dev_id(&[]), Some(1));
        assert_eq!(next_dev_id(&[1, 2, 5]), Some(6));
        assert_eq!(next_dev_id(&[1, 2, 4, MAX_DEV_ID]), Some(3));
        assert_eq!(next_dev_id(&[2, MAX_DEV_ID]), Some(1));
        let all: Vec<u64> = (1..=MAX_DEV_ID).collect();
        assert_eq!(next_dev_id(&all), None);
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(dm_name_part("agent/v2 x"), "agent_v2_x");
        assert_eq!(dm_name_part(&"a".repeat(200)).len(), 64);
    }
}
