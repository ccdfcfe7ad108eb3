//! UTC timestamps as the audit chain writes them: RFC 3339 with microseconds, always 27 bytes
//! (`2025-01-31T12:00:00.123456Z`), formatted without allocating.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of every timestamp the chain writes.
pub const STAMP_LEN: usize = 27;

/// Microseconds since the Unix epoch.
pub type Micros = u64;

/// The wall clock, in microseconds since the epoch (0 if it reads before 1970).
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The wall clock in whole seconds since the epoch: the unit of tokens' `exp`.
pub fn now_secs() -> u64 {
    now_micros() / 1_000_000
}

/// Writes `micros` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (years 1970..=9999).
pub fn format_into(micros: Micros, out: &mut [u8; STAMP_LEN]) {
    let seconds = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut put = |at: usize, value: u64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.min(9999), 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    put(20, fraction, 6);
    for (at, b) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = b;
    }
    out[26] = b'Z';
}

pub fn format(micros: Micros) -> String {
    let mut out = [0u8; STAMP_LEN];
    format_into(micros, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses any RFC 3339 time into microseconds since the epoch.
pub fn parse(text: &str) -> Option<Micros> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
}

/// Parses a time given on the command line: RFC 3339 (`2025-01-31T12:00:00Z`), a date
/// (`2025-01-31`, midnight UTC), or a duration meaning that long ago (`15m`, `2h`, `7d`).
pub fn parse_cli(text: &str) -> Result<Micros, String> {
    if let Some(micros) = parse(text) {
        return Ok(micros);
    }
    if let Some(micros) = parse(&format!("{text}T00:00:00Z")) {
        return Ok(micros);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = u64::try_from(ago.as_micros()).unwrap_or(u64::MAX);
        return Ok(now_micros().saturating_sub(ago));
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2025-01-31T12:00:00Z), a date (2025-01-31) or an age (15m, 2h, 7d)"
    ))
}

/// `micros` as a `SystemTime`.
#[cfg(test)]
pub fn system_time(micros: Micros) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_micros(micros)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_humantime() {
        for micros in [
            0,
            1,
            951_782_400_000_000,     // 2000-02-29
            1_738_324_800_123_456,   // 2025-01-31T12:00:00.123456Z
            4_102_444_799_999_999,   // 2099-12-31T23:59:59.999999Z
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999Z
        ] {
            let expected = humantime::format_rfc3339_micros(system_time(micros)).to_string();
            assert_eq!(format(micros), expected);
            assert_eq!(parse(&expected), Some(micros));
        }
        let mut day = 0;
        while day < 200_000 {
            let micros = day * 86_400_000_000 + 3_723_000_042;
            assert_eq!(
                format(micros),
                humantime::format_rfc3339_micros(system_time(micros)).to_string()
            );
            day += 37;
        }
    }

    #[test]
    fn parses_command_line_times() {
        assert_eq!(
            parse_cli("2025-01-31").unwrap(),
            parse("2025-01-31T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_cli("2025-01-31T12:00:00.5Z").unwrap(),
            1_738_324_800_500_000
        );
        let ago = parse_cli("1h").unwrap();
        assert!(now_micros() - ago >= 3_600_000_000);
        assert!(parse_cli("yesterday-ish").is_err());
    }
}
