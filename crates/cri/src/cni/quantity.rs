//! Kubernetes resource quantities (`100M`, `1.5Gi`, `2e6`) as whole numbers, rounded up as
//! `resource.Quantity.Value()` does; used for the bandwidth annotations (bits per second).

/// Parses a non-negative quantity into its integer value (rounded up).
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a Kubernetes quantity (e.g. 10M, 1.5Gi, 2e6)");
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let num_len = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_len);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() + frac.len() > 30 {
        return Err(bad());
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().map_err(|_| bad())?;
    // value = mantissa * 2^bin * 10^dec / 10^frac.len()
    let (bin, dec): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            if !(-30..=30).contains(&exp) {
                return Err(format!("{s:?}: exponent out of range"));
            }
            (0, exp)
        }
        _ => return Err(bad()),
    };
    let too_big = || format!("{s:?} is too large");
    let frac_len = i32::try_from(frac.len()).map_err(|_| bad())?;
    let dec = dec - frac_len;
    let pow10 = |e: i32| 10u128.checked_pow(e.unsigned_abs());
    let mut num = mantissa.checked_mul(1u128 << bin).ok_or_else(too_big)?;
    let mut den = 1u128;
    if dec >= 0 {
        num = num.checked_mul(pow10(dec).ok_or_else(too_big)?).ok_or_else(too_big)?;
    } else {
        den = pow10(dec).ok_or_else(too_big)?;
    }
    let value = num.div_ceil(den);
    u64::try_from(value).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_integers_rounded_up() {
        let cases = [
            ("10M", 10_000_000),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1.5Gi", 1_610_612_736),
            ("2e6", 2_000_000),
            ("2E3", 2000),
            ("100", 100),
            ("+5", 5),
            ("0.5", 1),
            ("1500m", 2),
            (".5k", 500),
            ("1P", 1_000_000_000_000_000),
        ];
        for (s, want) in cases {
            assert_eq!(parse_quantity(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        for s in ["", "M", "1x", "1.2.3", "-1M", "1e99", "99999E", "1 M", "1Mi5"] {
            assert!(parse_quantity(s).is_err(), "{s}");
        }
    }
}
