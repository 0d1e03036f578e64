//! Ingest metadata of a table: how its changes are found (`cdc_mode`), how far below its
//! watermark each window starts (`lookback`), and whether rows deleted in the source are
//! detected (`deletes`).

use serde::Deserialize;

use super::TableSpec;
use crate::window::Lookback;

/// How deletes in the source reach the lake (`[[tables]] deletes`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Deletes {
    /// Not detected: a row deleted in the source stays in the lake (or is deleted by an
    /// `apply_as_deletes` condition on rows the source marks as deleted).
    #[default]
    None,
    /// Each ingest also reads the source's keys and writes a delete marker
    /// (`_change_type = 'delete'`) for every key that vanished since the last ingest.
    Detect,
}

/// How a table's changes are found (`[[tables]] cdc_mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CdcMode {
    /// Rows whose watermark column is past the stored watermark.
    #[default]
    Watermark,
    /// SQL Server Change Tracking: `CHANGETABLE(CHANGES ...)` since the stored
    /// `SYS_CHANGE_VERSION`, deletes included (`SYS_CHANGE_OPERATION = 'D'`).
    ChangeTracking,
}

/// The watermark column of a Change Tracking table: the change's version.
pub const CHANGE_VERSION: &str = "SYS_CHANGE_VERSION";

/// `lookback` as written: a duration text (`"2h"`) or an integer (for integer watermarks).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum LookbackSetting {
    /// A duration (`"90s"`, `"30m"`, `"2h"`, `"1d"`).
    Text(String),
    /// An amount of an integer watermark.
    Count(i64),
}

impl TableSpec {
    /// The table's lookback, `None` when it has none (or a zero one).
    pub fn lookback(&self) -> Option<Lookback> {
        let parsed = match self.lookback.as_ref()? {
            LookbackSetting::Text(t) => Lookback::parse(t).ok()?,
            LookbackSetting::Count(n) => Lookback::parse(&n.to_string()).ok()?,
        };
        (parsed != Lookback::Count(0) && parsed != Lookback::Duration(0)).then_some(parsed)
    }
}

/// Checks one table's ingest options.
pub(super) fn validate(t: &TableSpec, at: &str, problem: &mut impl FnMut(String, String)) {
    if t.cdc_mode == CdcMode::ChangeTracking {
        if t.cdc_column != CHANGE_VERSION {
            problem(
                format!("{at}.cdc_column"),
                format!(
                    "a change_tracking table's watermark is the change version: set cdc_column = \"{CHANGE_VERSION}\""
                ),
            );
        }
        if t.deletes == Deletes::Detect {
            problem(
                format!("{at}.deletes"),
                "change tracking reports deletes itself; leave deletes out".to_string(),
            );
        }
        if t.lookback.is_some() {
            problem(
                format!("{at}.lookback"),
                "change versions never commit late; a change_tracking table takes no lookback"
                    .to_string(),
            );
        }
    }
    let parsed = match &t.lookback {
        None => return,
        Some(LookbackSetting::Text(text)) => Lookback::parse(text),
        Some(LookbackSetting::Count(n)) => Lookback::parse(&n.to_string()),
    };
    if let Err(message) = parsed {
        problem(format!("{at}.lookback"), message);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Pipeline;
    use crate::error::Error;
    use crate::window::Lookback;

    fn table(extra: &str) -> String {
        format!("[[tables]]\nname = \"T\"\ncdc_column = \"c\"\nkeys = [\"k\"]\n{extra}\n")
    }

    #[test]
    fn lookbacks_are_read_as_durations_or_counts_and_bad_ones_are_named() {
        let p = Pipeline::parse(&table("lookback = \"2h\""), "p.toml").unwrap();
        assert_eq!(
            p.tables[0].lookback(),
            Some(Lookback::Duration(7_200_000_000))
        );
        let p = Pipeline::parse(&table("lookback = 50"), "p.toml").unwrap();
        assert_eq!(p.tables[0].lookback(), Some(Lookback::Count(50)));
        let p = Pipeline::parse(&table("lookback = \"0s\""), "p.toml").unwrap();
        assert_eq!(p.tables[0].lookback(), None);
        let p = Pipeline::parse(&table(""), "p.toml").unwrap();
        assert_eq!(p.tables[0].lookback(), None);
        let Error::Config { problems, .. } =
            Pipeline::parse(&table("lookback = \"two hours\""), "p.toml").unwrap_err()
        else {
            panic!()
        };
        assert_eq!(problems[0].location, "tables[0] (T).lookback");
        assert!(problems[0].message.contains("two hours"), "{}", problems[0]);
    }

    #[test]
    fn change_tracking_takes_the_change_version_and_no_other_delete_or_late_row_option() {
        let ok = "[[tables]]\nname = \"T\"\ncdc_column = \"SYS_CHANGE_VERSION\"\nkeys = [\"k\"]\ncdc_mode = \"change_tracking\"\n";
        let p = Pipeline::parse(ok, "p.toml").unwrap();
        assert_eq!(p.tables[0].cdc_mode, super::CdcMode::ChangeTracking);
        let Error::Config { problems, .. } = Pipeline::parse(
            &table("cdc_mode = \"change_tracking\"\ndeletes = \"detect\"\nlookback = \"1h\""),
            "p.toml",
        )
        .unwrap_err() else {
            panic!()
        };
        let locations: Vec<_> = problems.iter().map(|p| p.location.as_str()).collect();
        assert_eq!(
            locations,
            [
                "tables[0] (T).cdc_column",
                "tables[0] (T).deletes",
                "tables[0] (T).lookback"
            ]
        );
        let Error::Config { problems, .. } =
            Pipeline::parse(&table("deletes = \"sometimes\""), "p.toml").unwrap_err()
        else {
            panic!()
        };
        assert!(problems[0].message.contains("sometimes"), "{}", problems[0]);
    }
}
