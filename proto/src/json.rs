//! JSON text with numbers written as JavaScript writes them.
//!
//! LoopBack answers and emits what `JSON.stringify` makes of a record, and a browser's
//! `JSON.stringify` is what a client compares against. serde_json writes the same value in
//! other bytes: `1.0`, `1e6` and `-0.0` read as floats and come back as `1.0`, `1000000.0`
//! and `-0.0` (JavaScript: `1`, `1000000`, `0`), `0.000001` as `1e-6`, `1e20` as `1e+20`
//! (JavaScript writes both in full), and integers beyond 2^53 exactly, where JavaScript has
//! already rounded them to the nearest double (`12345678901234567890` is
//! `12345678901234567000`). Every JSON text the browser or a REST client receives, and
//! every record stored, is written by [`to_string`], so the bytes are LoopBack's.
//!
//! [`js_number`] is ECMAScript's `Number::toString` (radix 10) on the shortest digits that
//! read back as the same double, which Rust's `{:e}` gives.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, Serializer};

/// The compact JSON text of `value`, numbers as JavaScript's `JSON.stringify` writes them.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut serializer = Serializer::with_formatter(&mut out, JsFormatter);
    // A serde_json value (or a struct of them) always serializes: map keys are strings and
    // serde_json holds no non-finite float (the serializer writes those as `null` anyway).
    value
        .serialize(&mut serializer)
        .unwrap_or_else(|_| unreachable!("JSON value serializes"));
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|_| unreachable!("JSON text is UTF-8"))
}

/// serde_json's compact output with JavaScript's number bytes.
#[derive(Debug, Clone, Copy)]
struct JsFormatter;

/// 2^53: integers up to here are exact doubles, and JavaScript writes them digit for digit.
const EXACT: u64 = 1 << 53;

impl Formatter for JsFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(js_number(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // The shortest digits of the f32, as a double (what `Math.fround` then prints would
        // carry the f32's binary noise; no wire value is an f32).
        let shortest: f64 = value.to_string().parse().unwrap_or(f64::from(value));
        self.write_f64(writer, shortest)
    }

    fn write_u64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: u64) -> io::Result<()> {
        if value <= EXACT {
            CompactFormatter.write_u64(writer, value)
        } else {
            #[allow(clippy::cast_precision_loss)] // the rounding JSON.parse does
            self.write_f64(writer, value as f64)
        }
    }

    fn write_i64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: i64) -> io::Result<()> {
        if value.unsigned_abs() <= EXACT {
            CompactFormatter.write_i64(writer, value)
        } else {
            #[allow(clippy::cast_precision_loss)] // the rounding JSON.parse does
            self.write_f64(writer, value as f64)
        }
    }
}

/// A double as JavaScript's `String(n)` writes it: whole numbers below 10^21 in full,
/// decimals from 10^-6 up positionally, others as `d.ddde±x`; `-0` is `0`. (JSON has no
/// `NaN` or `Infinity`; they come out as JavaScript names them.)
pub fn js_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    if !value.is_finite() {
        return match value {
            f64::INFINITY => "Infinity",
            f64::NEG_INFINITY => "-Infinity",
            _ => "NaN",
        }
        .into();
    }
    // `{:e}` is the shortest round-trip digits: `-1.2345e-7`, `1e21`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or_else(|| unreachable!("{{:e}} has an exponent"));
    let exponent: i32 = exponent
        .parse()
        .unwrap_or_else(|_| unreachable!("{{:e}} exponent is an integer"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // ECMAScript's k (digit count) and n (the decimal point's place after the first digit).
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exponent + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if value < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(n as usize);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).unsigned_abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each literal (as a client may write it) and what Node's `JSON.stringify` writes for
    /// it (recorded with Node 20; tests/loopback/numbers.test.js checks the same against a
    /// running LoopBack 3).
    const TABLE: &[(&str, &str)] = &[
        ("0", "0"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("0.0", "0"),
        ("1.0", "1"),
        ("-1.0", "-1"),
        ("1e6", "1000000"),
        ("123456.789e3", "123456789"),
        ("2.5", "2.5"),
        ("0.1", "0.1"),
        ("0.3", "0.3"),
        ("4.35", "4.35"),
        ("-7.25", "-7.25"),
        ("0.000001", "0.000001"),
        ("1e-6", "0.000001"),
        ("1.5e-6", "0.0000015"),
        ("0.0000123", "0.0000123"),
        ("1e-7", "1e-7"),
        ("1.5e-7", "1.5e-7"),
        ("123e-20", "1.23e-18"),
        ("5e-324", "5e-324"),
        ("1e16", "10000000000000000"),
        ("9007199254740991", "9007199254740991"),
        ("9007199254740992", "9007199254740992"),
        ("9007199254740993", "9007199254740992"),
        ("-9007199254740993", "-9007199254740992"),
        ("12345678901234567890", "12345678901234567000"),
        ("18446744073709551615", "18446744073709552000"),
        ("18446744073709551616", "18446744073709552000"),
        ("1e20", "100000000000000000000"),
        ("1.5e20", "150000000000000000000"),
        ("-1.5e20", "-150000000000000000000"),
        ("123456789012345678901", "123456789012345680000"),
        ("999999999999999999999", "1e+21"),
        ("1e21", "1e+21"),
        ("1.5e21", "1.5e+21"),
        ("1e300", "1e+300"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("-2.5e-10", "-2.5e-10"),
        ("100", "100"),
        ("-42", "-42"),
    ];

    #[test]
    fn numbers_come_out_as_javascript_writes_them() {
        for (literal, javascript) in TABLE {
            let value: serde_json::Value = serde_json::from_str(literal).unwrap();
            assert_eq!(to_string(&value), *javascript, "{literal}");
        }
    }

    #[test]
    fn everything_else_is_serde_jsons_compact_text() {
        let text = r#"{"s":"a\"b\\c\u0001\u2028é","t":true,"n":null,"a":[1,{"x":[]}],"o":{}}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(to_string(&value), serde_json::to_string(&value).unwrap());
        assert_eq!(to_string(&value), text.replace("\\u2028", "\u{2028}"));
    }

    #[test]
    fn shortest_digits_survive_a_round_trip() {
        for n in [
            0.1 + 0.2,
            1.0 / 3.0,
            2.0f64.powi(70),
            1e-300 / 3.0,
            123.456e-9,
            6.02e23,
        ] {
            assert_eq!(js_number(n).parse::<f64>().unwrap(), n);
        }
        assert_eq!(js_number(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(js_number(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(js_number(6.02e23), "6.02e+23");
        assert_eq!(js_number(f64::NAN), "NaN");
        assert_eq!(js_number(f64::NEG_INFINITY), "-Infinity");
    }
}
