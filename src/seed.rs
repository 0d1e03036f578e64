//! The sample source: the five tables of DESIGN.md §4 in a SQLite file, with realistic,
//! deterministic data and the dirt real sources have, plus incremental change batches.
//!
//! Randomness is a SplitMix64 stream seeded from `--seed` (and, for a change batch, the
//! source's current high timestamps), so the same command on the same file always gives the
//! same rows on every platform and version.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rusqlite::{Connection, params};

use crate::error::{Error, Result};
use crate::progress;
use crate::source::sqlite::open_for_write;

/// Rows per table at scale 1.
pub const USERS_PER_SCALE: f64 = 100_000.0;
/// Artists at scale 1.
pub const ARTISTS_PER_SCALE: f64 = 10_000.0;
/// Tracks at scale 1.
pub const TRACKS_PER_SCALE: f64 = 100_000.0;
/// Streams at scale 1.
pub const STREAMS_PER_SCALE: f64 = 1_000_000.0;
/// The user id that streams of unknown users point to.
pub const UNKNOWN_USER_ID: i64 = 999_999_999;

const DDL: &str = "
CREATE TABLE DimUser (user_id INT PRIMARY KEY, user_name NVARCHAR(100), country NVARCHAR(50),
  subscription_type NVARCHAR(20), start_date DATE, end_date DATE NULL, updated_at DATETIME2);
CREATE TABLE DimArtist (artist_id INT PRIMARY KEY, artist_name NVARCHAR(200), genre NVARCHAR(50),
  country NVARCHAR(50), updated_at DATETIME2);
CREATE TABLE DimTrack (track_id INT PRIMARY KEY, track_name NVARCHAR(200), artist_id INT,
  album_name NVARCHAR(200), duration_sec INT, release_date DATE, updated_at DATETIME2);
CREATE TABLE DimDate (date_key INT PRIMARY KEY, date DATE, day INT, month INT, year INT,
  weekday NVARCHAR(10));
CREATE TABLE FactStream (stream_id BIGINT PRIMARY KEY, user_id INT, track_id INT, date_key INT,
  listen_duration INT, device_type NVARCHAR(20), stream_timestamp DATETIME2);
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS ix_dim_user_updated_at ON DimUser(updated_at);
CREATE INDEX IF NOT EXISTS ix_dim_artist_updated_at ON DimArtist(updated_at);
CREATE INDEX IF NOT EXISTS ix_dim_track_updated_at ON DimTrack(updated_at);
CREATE INDEX IF NOT EXISTS ix_dim_date_date ON DimDate(date);
CREATE INDEX IF NOT EXISTS ix_fact_stream_timestamp ON FactStream(stream_timestamp);
";

const FIRST: &[&str] = &[
    "olivia", "liam", "emma", "noah", "ava", "elijah", "sophia", "james", "mia", "lucas", "amelia",
    "mateo", "harper", "levi", "evelyn", "ethan", "luna", "henry", "José", "Zoë", "Søren",
    "Łukasz", "Ángel", "Chloé", "Björn", "Yūki", "İlkay", "Nguyễn", "Даша", "美咲",
];
const LAST: &[&str] = &[
    "smith",
    "johnson",
    "garcia",
    "müller",
    "martin",
    "rossi",
    "silva",
    "kim",
    "sato",
    "nowak",
    "larsen",
    "dubois",
    "lópez",
    "khan",
    "brown",
    "wilson",
    "moreau",
    "berg",
    "costa",
    "novák",
    "yılmaz",
    "singh",
    "tanaka",
    "fischer",
    "jensen",
    "Ødegaard",
    "Çelik",
    "Иванова",
];
const WORDS: &[&str] = &[
    "blue", "night", "fire", "dream", "river", "golden", "echo", "wild", "electric", "silent",
    "neon", "summer", "broken", "heart", "city", "ocean", "shadow", "light", "paper", "stone",
    "velvet", "crystal", "midnight", "sugar", "thunder", "glass", "honey", "storm", "lunar",
    "café", "señor", "über",
];
const COUNTRIES: &[&str] = &[
    "US", "GB", "DE", "FR", "SE", "NO", "ES", "IT", "NL", "BR", "MX", "CA", "AU", "JP", "IN", "PL",
    "TR", "AR", "ZA", "KR",
];
const SUBSCRIPTIONS: &[&str] = &["free", "premium", "family", "student"];
const GENRES: &[&str] = &[
    "pop",
    "rock",
    "hip hop",
    "electronic",
    "jazz",
    "classical",
    "r&b",
    "country",
    "metal",
    "folk",
    "latin",
    "reggae",
    "blues",
    "indie",
    "k-pop",
];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet", "smart_speaker", "tv", "web"];
const WEEKDAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A SplitMix64 stream: tiny, fast, and the same everywhere forever.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, tag: &str) -> Self {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        for b in tag.bytes() {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        Rng(state)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n.max(1))) >> 64) as u64
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1).max(1) as u64) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    /// A value from `items`, dirtied.
    fn dirty_pick(&mut self, items: &[&str]) -> String {
        let v = self.pick(items);
        dirty(self, v)
    }
    /// A person's name, dirtied.
    fn person(&mut self) -> String {
        let name = format!("{} {}", self.pick(FIRST), self.pick(LAST));
        dirty(self, &name)
    }
}

/// Mixed case and stray spaces, as hand-entered data has.
fn dirty(rng: &mut Rng, text: &str) -> String {
    let cased = match rng.below(4) {
        0 => text.to_uppercase(),
        1 => text.to_lowercase(),
        2 => title_case(text),
        _ => text.to_string(),
    };
    if rng.chance(0.1) {
        format!(
            "{}{cased}{}",
            " ".repeat(rng.range(1, 2) as usize),
            " ".repeat(rng.range(0, 2) as usize)
        )
    } else {
        cased
    }
}

fn title_case(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn micros(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map_or(0, |d| d.and_utc().timestamp_micros())
}

fn ts_text(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

fn date_of(us: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(us).map_or(NaiveDate::MIN, |d| d.date_naive())
}

fn date_key(d: NaiveDate) -> i64 {
    i64::from(d.year()) * 10_000 + i64::from(d.month()) * 100 + i64::from(d.day())
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

const DAY_US: i64 = 86_400_000_000;

/// Rows written per table by a seed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SeedReport {
    /// `(table, rows inserted, rows updated)`.
    pub tables: Vec<(String, u64, u64)>,
    /// How long it took.
    pub seconds: f64,
}

impl SeedReport {
    fn add(&mut self, table: &str, inserted: u64, updated: u64) {
        self.tables.push((table.to_string(), inserted, updated));
    }
}

fn sql(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::sqlite(context, e)
}

/// Creates (or recreates) the sample source at `path` with `scale` × the scale-1 row counts.
pub fn create(path: &Path, scale: f64, seed: u64) -> Result<SeedReport> {
    if !(scale > 0.0 && scale <= 1000.0) {
        return Err(Error::BadArgument {
            what: "--scale".into(),
            message: format!("{scale} must be above 0 and at most 1000"),
        });
    }
    write_reference(path.parent().unwrap_or(Path::new(".")))?;
    let start = Instant::now();
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    let mut conn = open_for_write(path)?;
    fast_writes(&conn)?;
    conn.execute_batch(DDL)
        .map_err(sql("creating the sample tables"))?;
    let n = |per: f64| ((per * scale).round() as i64).max(1);
    let (users, artists, tracks, streams) = (
        n(USERS_PER_SCALE),
        n(ARTISTS_PER_SCALE),
        n(TRACKS_PER_SCALE),
        n(STREAMS_PER_SCALE),
    );
    let as_of = micros(ymd(2025, 7, 1)) - 1;
    let mut report = SeedReport::default();
    let tx = conn.transaction().map_err(sql("seeding"))?;
    {
        insert_users(&tx, seed, users, as_of)?;
        report.add("DimUser", users as u64, 0);

        insert_artists(&tx, seed, artists)?;
        report.add("DimArtist", artists as u64, 0);

        insert_tracks(&tx, seed, tracks, artists)?;
        report.add("DimTrack", tracks as u64, 0);

        let days = insert_dates(&tx)?;
        report.add("DimDate", days, 0);

        let first = micros(ymd(2024, 1, 1));
        insert_streams(
            &tx,
            &mut Rng::new(seed, "FactStream"),
            (1, streams),
            users,
            tracks,
            (first, as_of),
            &|_| first,
        )?;
        report.add("FactStream", streams as u64, 0);
    }
    tx.commit().map_err(sql("seeding"))?;
    conn.execute_batch(INDEXES).map_err(sql("indexing"))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// DimUser: `users` members, a few with names that only differ in case and spaces.
fn insert_users(tx: &rusqlite::Transaction, seed: u64, users: i64, as_of: i64) -> Result<()> {
    let tracker = progress::Tracker::start("seed", "DimUser");
    let mut rng = Rng::new(seed, "DimUser");
    let mut stmt = tx
        .prepare("INSERT INTO DimUser VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(sql("DimUser"))?;
    let mut previous = String::new();
    for id in 1..=users {
        let name = if id > 1 && rng.chance(0.01) {
            // A different person whose name looks like the one before: case and spaces only.
            dirty(&mut rng, previous.trim())
        } else {
            rng.person()
        };
        // Every first version predates the first stream (2024-01-01), as sign-up precedes
        // listening; so a stream's user version is always there at its time.
        let start_day = micros(ymd(2023, 1, 1)) + rng.range(0, 270) * DAY_US;
        let updated = (start_day + rng.range(0, 90 * DAY_US)).min(as_of);
        let end = rng
            .chance(0.05)
            .then(|| date_of(updated + rng.range(1, 60) * DAY_US).to_string());
        stmt.execute(params![
            id,
            name,
            (!rng.chance(0.01)).then(|| rng.dirty_pick(COUNTRIES)),
            rng.dirty_pick(SUBSCRIPTIONS),
            date_of(start_day).to_string(),
            end,
            ts_text(updated)
        ])
        .map_err(sql("DimUser"))?;
        previous = name;
    }
    tracker.finish("ok", users as u64);
    Ok(())
}

/// DimArtist: `artists` artists with dirty names and genres.
fn insert_artists(tx: &rusqlite::Transaction, seed: u64, artists: i64) -> Result<()> {
    let tracker = progress::Tracker::start("seed", "DimArtist");

    let mut rng = Rng::new(seed, "DimArtist");
    let mut stmt = tx
        .prepare("INSERT INTO DimArtist VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(sql("DimArtist"))?;
    for id in 1..=artists {
        let name = match rng.below(3) {
            0 => format!(
                "The {} {}",
                title_case(rng.pick(WORDS)),
                title_case(rng.pick(WORDS))
            ),
            1 => format!(
                "{} {}",
                title_case(rng.pick(FIRST)),
                title_case(rng.pick(LAST))
            ),
            _ => format!("DJ {}", title_case(rng.pick(WORDS))),
        };
        stmt.execute(params![
            id,
            dirty(&mut rng, &name),
            rng.dirty_pick(GENRES),
            (!rng.chance(0.02)).then(|| rng.dirty_pick(COUNTRIES)),
            ts_text(micros(ymd(2023, 1, 1)) + rng.range(0, 360 * DAY_US))
        ])
        .map_err(sql("DimArtist"))?;
    }
    tracker.finish("ok", artists as u64);
    Ok(())
}

/// DimTrack: `tracks` tracks of the `artists`.
fn insert_tracks(tx: &rusqlite::Transaction, seed: u64, tracks: i64, artists: i64) -> Result<()> {
    let tracker = progress::Tracker::start("seed", "DimTrack");

    let mut rng = Rng::new(seed, "DimTrack");
    let mut stmt = tx
        .prepare("INSERT INTO DimTrack VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(sql("DimTrack"))?;
    for id in 1..=tracks {
        stmt.execute(params![
            id,
            track_name(&mut rng),
            rng.range(1, artists),
            {
                let album = format!("{} {}", rng.pick(WORDS), rng.pick(WORDS));
                dirty(&mut rng, &album)
            },
            rng.range(45, 540),
            date_of(micros(ymd(2000, 1, 1)) + rng.range(0, 9_300) * DAY_US).to_string(),
            ts_text(micros(ymd(2023, 1, 1)) + rng.range(0, 360 * DAY_US))
        ])
        .map_err(sql("DimTrack"))?;
    }
    tracker.finish("ok", tracks as u64);
    Ok(())
}

/// DimDate: every day of 2023 to 2025; returns how many.
fn insert_dates(tx: &rusqlite::Transaction) -> Result<u64> {
    let mut stmt = tx
        .prepare("INSERT INTO DimDate VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .map_err(sql("DimDate"))?;
    let mut day = ymd(2023, 1, 1);
    let mut days = 0;
    while day <= ymd(2025, 12, 31) {
        stmt.execute(params![
            date_key(day),
            day.to_string(),
            day.day(),
            day.month(),
            day.year(),
            WEEKDAYS[day.weekday().num_days_from_monday() as usize]
        ])
        .map_err(sql("DimDate"))?;
        days += 1;
        day = day.succ_opt().unwrap_or(NaiveDate::MAX);
    }
    Ok(days)
}

fn fast_writes(conn: &Connection) -> Result<()> {
    // A seed is rebuilt from scratch if it dies, so durability per statement buys nothing.
    conn.execute_batch("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
        .map_err(sql("preparing the sample database"))
}

fn track_name(rng: &mut Rng) -> String {
    let words: Vec<_> = (0..rng.range(1, 3)).map(|_| rng.pick(WORDS)).collect();
    // The reference stack's silver replaces these hyphens with spaces.
    let sep = if rng.chance(0.3) { "-" } else { " " };
    dirty(rng, &words.join(sep))
}

/// Inserts `count` streams from id `first_id`, at times in `[from_us, to_us)` but never
/// before `user_since(user)` (a user cannot listen before signing up).
fn insert_streams(
    tx: &Connection,
    rng: &mut Rng,
    (first_id, count): (i64, i64),
    users: i64,
    tracks: i64,
    (from_us, to_us): (i64, i64),
    user_since: &dyn Fn(i64) -> i64,
) -> Result<()> {
    let mut stmt = tx
        .prepare("INSERT INTO FactStream VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(sql("FactStream"))?;
    let tracker = progress::Tracker::start("seed", "FactStream");
    let mut last: Option<(i64, i64, i64, i64)> = None;
    for id in first_id..first_id + count {
        if (id - first_id) % 8192 == 8191 {
            tracker.add(8192);
        }
        let (user, track, at, duration) = match last {
            // A double-logged play: same user, track, time and duration under a new id.
            Some(prev) if rng.chance(0.01) => prev,
            _ => {
                let user = if rng.chance(0.0005) {
                    UNKNOWN_USER_ID
                } else {
                    rng.range(1, users)
                };
                let since = user_since(user).clamp(from_us, to_us - 1);
                (
                    user,
                    rng.range(1, tracks),
                    rng.range(since, to_us),
                    if rng.chance(0.001) {
                        -rng.range(1, 300)
                    } else {
                        rng.range(5, 540)
                    },
                )
            }
        };
        stmt.execute(params![
            id,
            user,
            track,
            date_key(date_of(at)),
            duration,
            rng.dirty_pick(DEVICES),
            ts_text(at)
        ])
        .map_err(sql("FactStream"))?;
        last = Some((user, track, at, duration));
    }
    tracker.finish("ok", count as u64);
    Ok(())
}

/// The shipped pipeline's second source: `reference/` (country names, as the repository holds
/// them) in `dir`, beside the sample database, unless it is there already.
pub fn write_reference(dir: &Path) -> Result<()> {
    let folder = dir.join(REFERENCE_DIR);
    for (name, text) in REFERENCE_FILES {
        let path = folder.join(name);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// The folder of the reference files, as the shipped pipeline's `[sources.reference]` names it.
pub const REFERENCE_DIR: &str = "reference";
const REFERENCE_FILES: [(&str, &str); 1] =
    [("Country.csv", include_str!("../reference/Country.csv"))];

/// Deletes the user with the smallest id from the source, as an OLTP system removes an
/// account, and returns its id (`None` when there are no users).
pub fn delete_user(path: &Path) -> Result<Option<i64>> {
    let conn = open_for_write(path)?;
    let id: Option<i64> = conn
        .query_row("SELECT MIN(user_id) FROM DimUser", [], |r| r.get(0))
        .map_err(sql("finding a user to delete"))?;
    if let Some(id) = id {
        conn.execute("DELETE FROM DimUser WHERE user_id = ?1", [id])
            .map_err(sql("deleting a user"))?;
    }
    Ok(id)
}

/// Changes ~10% of the `max_user` users (subscription, country, churn, rename, or only the
/// time) and signs up ~5% new ones, at times in `base..base + window`. Returns the users
/// updated and each new user's sign-up time.
fn change_users(
    tx: &rusqlite::Transaction,
    batch_seed: u64,
    max_user: i64,
    (base, window): (i64, i64),
) -> Result<(u64, Vec<i64>)> {
    let tracker = progress::Tracker::start("seed", "DimUser");
    let mut rng = Rng::new(batch_seed, "DimUser+");
    let mut updated = 0u64;
    let mut update = tx
        .prepare(
            "UPDATE DimUser SET
               subscription_type = CASE WHEN ?7 = 1 THEN ?3 ELSE subscription_type END,
               country = CASE WHEN ?7 = 2 THEN ?4 ELSE country END,
               end_date = CASE WHEN ?7 = 3 THEN ?5 ELSE end_date END,
               user_name = CASE WHEN ?7 = 4 THEN ?6 ELSE user_name END,
               updated_at = ?2
             WHERE user_id = ?1",
        )
        .map_err(sql("DimUser"))?;
    for id in 1..=max_user {
        if !rng.chance(0.10) {
            continue;
        }
        let at = ts_text(base + rng.range(0, window));
        // 10% touch only updated_at; then subscription 45%, country 25%, churn 15%, rename 5%.
        let change = match rng.below(100) {
            0..10 => 0,
            10..55 => 1,
            55..80 => 2,
            80..95 => 3,
            _ => 4,
        };
        let subscription = rng.dirty_pick(SUBSCRIPTIONS);
        let country = rng.dirty_pick(COUNTRIES);
        let name = rng.person();
        update
            .execute(params![
                id,
                at,
                subscription,
                country,
                date_of(base + window).to_string(),
                name,
                change
            ])
            .map_err(sql("DimUser"))?;
        updated += 1;
    }
    let new_users = (max_user / 20).max(1);
    let mut stmt = tx
        .prepare("INSERT INTO DimUser VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)")
        .map_err(sql("DimUser"))?;
    let mut signed_up = Vec::with_capacity(new_users as usize);
    for id in max_user + 1..=max_user + new_users {
        let at = base + rng.range(0, window);
        signed_up.push(at);
        stmt.execute(params![
            id,
            rng.person(),
            (!rng.chance(0.01)).then(|| rng.dirty_pick(COUNTRIES)),
            rng.dirty_pick(SUBSCRIPTIONS),
            date_of(at).to_string(),
            ts_text(at)
        ])
        .map_err(sql("DimUser"))?;
    }
    tracker.finish("ok", signed_up.len() as u64 + updated);
    Ok((updated, signed_up))
}

/// Renames ~1% of the `max_track` tracks (a remastered album). Returns how many.
fn change_tracks(
    tx: &rusqlite::Transaction,
    batch_seed: u64,
    max_track: i64,
    (base, window): (i64, i64),
) -> Result<u64> {
    let tracker = progress::Tracker::start("seed", "DimTrack");

    let mut rng = Rng::new(batch_seed, "DimTrack+");
    let mut changed = 0;
    let mut stmt = tx
        .prepare("UPDATE DimTrack SET track_name = ?2, album_name = ?3, updated_at = ?4 WHERE track_id = ?1")
        .map_err(sql("DimTrack"))?;
    for id in 1..=max_track {
        if rng.chance(0.01) {
            let name = track_name(&mut rng);
            let album = format!("{} {} (Remastered)", rng.pick(WORDS), rng.pick(WORDS));
            let album = dirty(&mut rng, &album);
            stmt.execute(params![
                id,
                name,
                album,
                ts_text(base + rng.range(0, window))
            ])
            .map_err(sql("DimTrack"))?;
            changed += 1;
        }
    }
    tracker.finish("ok", changed);
    Ok(changed)
}

/// Changes the genre of ~1% of the `max_artist` artists. Returns how many.
fn change_artists(
    tx: &rusqlite::Transaction,
    batch_seed: u64,
    max_artist: i64,
    (base, window): (i64, i64),
) -> Result<u64> {
    let tracker = progress::Tracker::start("seed", "DimArtist");

    let mut rng = Rng::new(batch_seed, "DimArtist+");
    let mut changed = 0;
    let mut stmt = tx
        .prepare("UPDATE DimArtist SET genre = ?2, updated_at = ?3 WHERE artist_id = ?1")
        .map_err(sql("DimArtist"))?;
    for id in 1..=max_artist {
        if rng.chance(0.01) {
            stmt.execute(params![
                id,
                rng.dirty_pick(GENRES),
                ts_text(base + rng.range(0, window))
            ])
            .map_err(sql("DimArtist"))?;
            changed += 1;
        }
    }
    tracker.finish("ok", changed);
    Ok(changed)
}

/// Applies one change batch to the sample source at `path`, newer than anything it holds:
/// ~10% of users changed and ~5% new, ~1% of tracks and artists changed, ~10% more streams.
pub fn apply_changes(path: &Path, seed: u64) -> Result<SeedReport> {
    let start = Instant::now();
    if !path.is_file() {
        return Err(Error::SourceUnreachable {
            url: format!("sqlite:{}", path.display()),
            reason: "no such file: run `tunelake seed` first".into(),
        });
    }
    let mut conn = open_for_write(path)?;
    fast_writes(&conn)?;
    let one = |sql_text: &str| -> Result<(i64, String)> {
        conn.query_row(sql_text, [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql("reading the source's current state"))
    };
    let (max_user, user_hwm) = one("SELECT MAX(user_id), MAX(updated_at) FROM DimUser")?;
    let (max_track, track_hwm) = one("SELECT MAX(track_id), MAX(updated_at) FROM DimTrack")?;
    let (max_artist, artist_hwm) = one("SELECT MAX(artist_id), MAX(updated_at) FROM DimArtist")?;
    let (max_stream, stream_hwm) =
        one("SELECT MAX(stream_id), MAX(stream_timestamp) FROM FactStream")?;
    let parse = |t: &str| crate::source::columns::parse_timestamp_micros(t).unwrap_or(0);
    // Every change is newer than anything the source holds, as an OLTP clock would make it.
    let base = [&user_hwm, &track_hwm, &artist_hwm, &stream_hwm]
        .iter()
        .map(|t| parse(t))
        .max()
        .unwrap_or(0)
        + 1_000_000;
    let batch_seed = seed ^ (base as u64).rotate_left(17);
    let stream_count = (max_stream / 10).max(1);
    let window = 30 * DAY_US;
    let mut report = SeedReport::default();
    let tx = conn.transaction().map_err(sql("applying changes"))?;
    {
        let (updated, signed_up) = change_users(&tx, batch_seed, max_user, (base, window))?;
        let new_users = signed_up.len() as i64;
        report.add("DimUser", new_users as u64, updated);

        let changed = change_tracks(&tx, batch_seed, max_track, (base, window))?;
        report.add("DimTrack", 0, changed);

        let changed = change_artists(&tx, batch_seed, max_artist, (base, window))?;
        report.add("DimArtist", 0, changed);
        report.add("DimDate", 0, 0);

        let users = max_user + new_users;
        let since = |user: i64| {
            usize::try_from(user - max_user - 1)
                .ok()
                .and_then(|i| signed_up.get(i).copied())
                .unwrap_or(base)
        };
        insert_streams(
            &tx,
            &mut Rng::new(batch_seed, "FactStream+"),
            (max_stream + 1, stream_count),
            users,
            max_track,
            (base, base + window),
            &since,
        )?;
        report.add("FactStream", stream_count as u64, 0);
    }
    tx.commit().map_err(sql("applying changes"))?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_roughly_uniform() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(42, "t"), |r, _| Some(r.next()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(42, "t"), |r, _| Some(r.next()))
            .collect();
        let c: Vec<u64> = (0..5)
            .scan(Rng::new(42, "u"), |r, _| Some(r.next()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut rng = Rng::new(1, "x");
        let hits = (0..100_000).filter(|_| rng.chance(0.1)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| (3..=7).contains(&rng.range(3, 7))));
    }

    #[test]
    fn dates_and_keys() {
        assert_eq!(date_key(ymd(2024, 3, 1)), 20240301);
        assert_eq!(
            ts_text(micros(ymd(2024, 3, 1)) + 1),
            "2024-03-01 00:00:00.000001"
        );
    }
}
