//! Budgets: the most an account, a project or a key may spend in a calendar period (a day, a
//! week from Monday, a month, or in all), in a time zone. This module owns the definitions and
//! the calendar: which period an instant falls in. The credit book ([`super::credit`]) enforces
//! them at hold time against the spend the ledger derives (`ledger_spend`) plus what its own
//! requests take that the ledger has not applied yet.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use lumina_ledger::{SpendQuery, SpendScope};
use lumina_projector::BudgetRow;

/// The calendar a budget follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From local midnight to the next.
    Day,
    /// From Monday's local midnight to the next Monday's.
    Week,
    /// From the first of the month at local midnight to the next first.
    Month,
    /// Never resets.
    Total,
}

impl Period {
    /// `day`, `week`, `month` or `total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// The period named `name`.
    pub fn parse(name: &str) -> Option<Period> {
        match name {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            "total" => Some(Period::Total),
            _ => None,
        }
    }

    /// The period holding `now` in `tz`: its start and end, µs since the epoch; `None` for
    /// `total`.
    pub fn window(self, tz: Tz, now: DateTime<Utc>) -> Option<(i64, i64)> {
        let today = now.with_timezone(&tz).date_naive();
        let (first, next) = match self {
            Period::Total => return None,
            Period::Day => (today, today.checked_add_days(Days::new(1))?),
            Period::Week => {
                let monday = today
                    .checked_sub_days(Days::new(today.weekday().num_days_from_monday().into()))?;
                (monday, monday.checked_add_days(Days::new(7))?)
            }
            Period::Month => {
                let first = today.with_day(1)?;
                (first, first.checked_add_months(Months::new(1))?)
            }
        };
        Some((local_midnight(tz, first)?, local_midnight(tz, next)?))
    }
}

/// The instant a local day starts, µs: its midnight, or where a daylight-saving jump skips
/// midnight, the first local time that exists that day.
fn local_midnight(tz: Tz, day: NaiveDate) -> Option<i64> {
    let mut at = day.and_hms_opt(0, 0, 0)?;
    // Jumps are at most a few hours; search forward in quarter hours.
    for _ in 0..24 * 4 {
        match tz.from_local_datetime(&at) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return Some(t.with_timezone(&Utc).timestamp_micros());
            }
            LocalResult::None => at += chrono::Duration::minutes(15),
        }
    }
    None
}

/// The time zone named `name` (IANA, e.g. `Europe/Paris`).
pub fn timezone(name: &str) -> Option<Tz> {
    Tz::from_str(name).ok()
}

/// A budget in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// `bud_…`
    pub id: String,
    /// The account it belongs to.
    pub account_id: String,
    /// What it limits.
    pub scope: SpendScope,
    /// The account, project or key id.
    pub scope_id: String,
    /// The most its scope may use in a period, nano-credits.
    pub limit: i64,
    /// Use past which the crossing is recorded and the client told, nano-credits.
    pub soft_limit: Option<i64>,
    /// Its calendar.
    pub period: Period,
    /// The zone of its calendar.
    pub tz: Tz,
    /// The latest period start whose soft limit was crossed, as recorded.
    pub crossed: Option<i64>,
}

impl Budget {
    /// The budget a read-model row describes; `None` when the row names an unknown scope,
    /// period or zone (the admin API refuses those, so only a hand-edited row gets here).
    pub fn from_row(row: &BudgetRow) -> Option<Budget> {
        Some(Budget {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            scope: SpendScope::parse(&row.scope)?,
            scope_id: row.scope_id.clone(),
            limit: row.limit_nano,
            soft_limit: row.soft_limit_nano,
            period: Period::parse(&row.period)?,
            tz: timezone(&row.timezone)?,
            crossed: row.crossed_period_start,
        })
    }

    /// The start of the period holding `now` (0 for `total`), the key of its spend.
    pub fn period_start(&self, now: DateTime<Utc>) -> i64 {
        self.period
            .window(self.tz, now)
            .map_or(0, |(start, _)| start)
    }

    /// What to ask the ledger about the period holding `now`.
    pub fn query(&self, now: DateTime<Utc>) -> SpendQuery {
        SpendQuery {
            budget_id: self.id.clone(),
            scope: self.scope,
            scope_id: self.scope_id.clone(),
            since: self.period.window(self.tz, now).map(|(start, _)| start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    fn micros(rfc3339: &str) -> i64 {
        at(rfc3339).timestamp_micros()
    }

    #[test]
    fn a_day_in_new_york_runs_from_local_midnight_to_local_midnight() {
        let ny = timezone("America/New_York").unwrap();
        // 23:59 on 2 December in New York is 04:59 UTC on the 3rd.
        assert_eq!(
            Period::Day.window(ny, at("2026-12-03T04:59:00Z")),
            Some((
                micros("2026-12-02T05:00:00Z"),
                micros("2026-12-03T05:00:00Z")
            ))
        );
        // One minute past local midnight is the next day.
        assert_eq!(
            Period::Day.window(ny, at("2026-12-03T05:01:00Z")),
            Some((
                micros("2026-12-03T05:00:00Z"),
                micros("2026-12-04T05:00:00Z")
            ))
        );
        // The day daylight saving time ends lasts 25 hours.
        assert_eq!(
            Period::Day.window(ny, at("2026-11-01T12:00:00Z")),
            Some((
                micros("2026-11-01T04:00:00Z"),
                micros("2026-11-02T05:00:00Z")
            ))
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first_in_the_budgets_zone() {
        let paris = timezone("Europe/Paris").unwrap();
        // Thursday 3 December 2026; the week began on Monday the 30th of November.
        assert_eq!(
            Period::Week.window(paris, at("2026-12-03T12:00:00Z")),
            Some((
                micros("2026-11-29T23:00:00Z"),
                micros("2026-12-06T23:00:00Z")
            ))
        );
        // Sunday 23:30 in Paris is still the same week.
        assert_eq!(
            Period::Week
                .window(paris, at("2026-12-06T22:30:00Z"))
                .map(|w| w.0),
            Some(micros("2026-11-29T23:00:00Z"))
        );
        // 00:30 on 1 March in Paris is 23:30 UTC on 28 February: already March there.
        assert_eq!(
            Period::Month.window(paris, at("2027-02-28T23:30:00Z")),
            Some((
                micros("2027-02-28T23:00:00Z"),
                micros("2027-03-31T22:00:00Z")
            ))
        );
        assert_eq!(
            Period::Total.window(paris, at("2027-02-28T23:30:00Z")),
            None
        );
    }

    #[test]
    fn a_midnight_that_does_not_exist_starts_the_day_at_the_first_local_time() {
        // Santiago springs forward at midnight: 6 September 2026 starts at 01:00 local.
        let santiago = timezone("America/Santiago").unwrap();
        let (start, _) = Period::Day
            .window(santiago, at("2026-09-06T12:00:00Z"))
            .unwrap();
        assert_eq!(start, micros("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in [Period::Day, Period::Week, Period::Month, Period::Total] {
            assert_eq!(Period::parse(p.as_str()), Some(p));
        }
        assert_eq!(Period::parse("monthly"), None);
        assert!(timezone("Europe/Paris").is_some());
        assert!(timezone("Mars/Olympus").is_none());
    }
}
