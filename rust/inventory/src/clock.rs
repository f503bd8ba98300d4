//! `clockMegahertz`: the number a CPU's `frequency` text starts with, rounded.
//!
//! Upstream reads it with Go's `Sscanf("%f")` and `math.Round`. The rule here is the one the
//! Python implementation applies (the reference the tests compare with): Python's regular
//! expression `\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)` on the text, then `float()`, so
//! the spaces skipped and the digits read are Python's Unicode ones (`str.isspace()`, category
//! Nd), from Unicode 14.0 (Python 3.11's tables; a test checks them against the running Python).

use std::iter::Peekable;

use crate::output::Clock;

/// The characters Python's `str.isspace()` is true for (what `\s` matches in a str pattern).
const SPACES: [u32; 29] = [
    0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x001C, 0x001D, 0x001E, 0x001F, 0x0020, 0x0085, 0x00A0,
    0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
];

/// The zero of each run of ten decimal digits (Unicode category Nd, what `\d` matches: Unicode
/// encodes each such script's digits 0 to 9 as one contiguous run).
const DIGIT_ZEROS: [u32; 66] = [
    0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
    0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80,
    0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
    0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0,
    0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

fn is_space(c: char) -> bool {
    SPACES.binary_search(&u32::from(c)).is_ok()
}

/// The value of a decimal digit of any script (`'٣'` is 3), as Python's `float()` reads it.
fn digit(c: char) -> Option<u8> {
    if c.is_ascii() {
        return c.is_ascii_digit().then(|| c as u8 - b'0');
    }
    let c = u32::from(c);
    let run = DIGIT_ZEROS.partition_point(|&zero| zero <= c);
    let zero = DIGIT_ZEROS[run.checked_sub(1)?];
    u8::try_from(c - zero).ok().filter(|&d| d < 10)
}

/// The megahertz for a `frequency` text; `None` when it has no number, or it rounds to 0, or
/// it is not finite.
pub fn megahertz(frequency: &str) -> Option<Clock> {
    let number = leading_number(frequency)?;
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // Half away from zero, as Go's math.Round; exact, since a double with a fraction is < 2^52.
    let magnitude = value.abs();
    let mut whole = magnitude.floor();
    if magnitude - whole >= 0.5 {
        whole += 1.0;
    }
    let rounded = if value >= 0.0 { whole } else { -whole };
    if rounded == 0.0 {
        None
    } else if rounded.abs() < 9_007_199_254_740_992.0 {
        // |rounded| < 2^53: the cast is exact.
        Some(Clock::Int(rounded as i64))
    } else {
        Some(Clock::Float(rounded))
    }
}

/// Moves the decimal digits at the front of `chars` to `out` as ASCII; how many there were.
fn digits(chars: &mut Peekable<impl Iterator<Item = char>>, out: &mut String) -> usize {
    let mut n = 0;
    while let Some(d) = chars.peek().copied().and_then(digit) {
        out.push(char::from(b'0' + d));
        chars.next();
        n += 1;
    }
    n
}

/// The number the regular expression above captures, its digits made ASCII; `None` if none.
fn leading_number(text: &str) -> Option<String> {
    let mut chars = text.chars().skip_while(|&c| is_space(c)).peekable();
    let mut number = String::new();
    if let Some(&sign @ ('+' | '-')) = chars.peek() {
        number.push(sign);
        chars.next();
    }
    let whole = digits(&mut chars, &mut number);
    if chars.peek() == Some(&'.') {
        number.push('.');
        chars.next();
        let fraction = digits(&mut chars, &mut number);
        if whole == 0 && fraction == 0 {
            return None;
        }
    } else if whole == 0 {
        return None;
    }
    // The exponent counts only when digits follow `e`, `e+` or `e-`.
    if let Some(&e @ ('e' | 'E')) = chars.peek() {
        let mut exponent = String::from(e);
        chars.next();
        if let Some(&sign @ ('+' | '-')) = chars.peek() {
            exponent.push(sign);
            chars.next();
        }
        if digits(&mut chars, &mut exponent) > 0 {
            number.push_str(&exponent);
        }
    }
    Some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mhz(text: &str) -> Option<Clock> {
        megahertz(text)
    }

    #[test]
    fn reads_the_leading_number_and_rounds_half_away_from_zero() {
        assert_eq!(mhz("2100.084"), Some(Clock::Int(2100)));
        assert_eq!(mhz("2499.5"), Some(Clock::Int(2500)));
        assert_eq!(mhz("2499.4999"), Some(Clock::Int(2499)));
        assert_eq!(mhz("-2.5"), Some(Clock::Int(-3)));
        assert_eq!(mhz("  800"), Some(Clock::Int(800)));
        assert_eq!(mhz("1.5e3"), Some(Clock::Int(1500)));
        assert_eq!(mhz("1.E3"), Some(Clock::Int(1000)));
        assert_eq!(mhz(".5"), Some(Clock::Int(1)));
        assert_eq!(mhz("+7."), Some(Clock::Int(7)));
        assert_eq!(mhz("2.5GHz"), Some(Clock::Int(3)));
        assert_eq!(mhz("3e"), Some(Clock::Int(3)));
        assert_eq!(mhz("3e+"), Some(Clock::Int(3)));
        assert_eq!(mhz("3e-1x"), None); // 0.3 rounds to 0
        assert_eq!(mhz("1e400"), None);
        assert_eq!(mhz("0.4"), None);
        assert_eq!(mhz("-0.4"), None);
        assert_eq!(mhz("."), None);
        assert_eq!(mhz("+"), None);
        assert_eq!(mhz("unknown"), None);
        assert_eq!(mhz(""), None);
        assert_eq!(mhz("x1"), None);
    }

    #[test]
    fn python_spaces_and_digits_of_any_script() {
        assert_eq!(mhz("\u{1c}\u{3000}\u{a0}42"), Some(Clock::Int(42)));
        assert_eq!(mhz("\u{200b}42"), None); // a zero-width space is not a space to Python
        assert_eq!(mhz("١٢.٥"), Some(Clock::Int(13)));
        assert_eq!(mhz("1e\u{0663}"), Some(Clock::Int(1000)));
        assert_eq!(mhz("\u{1fbf9}"), Some(Clock::Int(9)));
        assert_eq!(mhz("\u{00b2}"), None); // superscript two is a digit but not decimal (No)
        assert_eq!(digit('\u{1d7ff}'), Some(9));
        assert_eq!(digit('\u{1d7cd}'), None);
    }

    #[test]
    fn large_values_become_floats_from_2_pow_53() {
        assert_eq!(
            mhz("9007199254740991"),
            Some(Clock::Int(9_007_199_254_740_991))
        );
        assert_eq!(
            mhz("9007199254740992"),
            Some(Clock::Float(9_007_199_254_740_992.0))
        );
        assert_eq!(mhz("-1e300"), Some(Clock::Float(-1e300)));
    }

    #[test]
    fn tables_are_sorted_runs() {
        assert!(SPACES.windows(2).all(|w| w[0] < w[1]));
        assert!(DIGIT_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]));
    }
}
