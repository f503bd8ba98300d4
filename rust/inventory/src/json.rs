//! Reading an inventory from JSON text into the model, in one pass, borrowing its strings.
//!
//! The documents accepted are those orjson accepts (the Python implementation parsed with it,
//! `metal3.inspection.parse_inventory` still returns its parse, and the tests compare the two
//! on edge cases and on thousands of edited documents): RFC 8259 JSON in
//! UTF-8, no byte order mark, no lone surrogate escapes, no number beyond the double range, at
//! most 1024 arrays and objects deep; integers read as 64-bit signed or unsigned, larger ones as
//! numbers; the last of duplicate keys wins. Every value is read and checked, including those of
//! keys the conversion does not use. A value of the wrong JSON type is kept as such (see
//! `model`), never refused here. The error messages use orjson's words.
//!
//! It is written for this one document shape rather than on a general JSON library: the text is
//! checked as UTF-8 once, strings without escapes are slices of it found eight bytes at a time,
//! the common LLDP pair `[type,"hex"]` has a direct path, and values go straight into the model
//! (about twice as fast here as serde_json into the same model).

use std::borrow::Cow;
use std::fmt;

use crate::model::{
    Boot, Cpu, Disk, Field, Firmware, Found, Int, Interface, Inventory, Item, Memory, SystemVendor,
    Text, Tlv, TlvType,
};

/// orjson's nesting limit: 1024 arrays or objects inside each other are read, 1025 are refused.
pub const MAX_DEPTH: usize = 1024;

/// Why the text is not JSON, and where (a byte offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub reason: &'static str,
    pub offset: usize,
    line: usize,
    column: usize,
    char_index: usize,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {} column {} (char {})",
            self.reason, self.line, self.column, self.char_index
        )
    }
}

type Result<T> = std::result::Result<T, Syntax>;

/// A syntax error before its position is turned into line and column (done once, at the end).
#[derive(Debug)]
struct Syntax {
    reason: &'static str,
    offset: usize,
}

/// The document in `raw`: `Field::Value` when it is an object.
pub fn read(raw: &[u8]) -> std::result::Result<Field<Inventory<'_>>, SyntaxError> {
    let located = |e: Syntax| locate(raw, e);
    let text = std::str::from_utf8(raw).map_err(|_| {
        located(Syntax {
            reason: "str is not valid UTF-8: surrogates not allowed",
            offset: 0,
        })
    })?;
    let mut reader = Reader {
        text,
        bytes: raw,
        pos: 0,
    };
    let document = reader.document().map_err(located)?;
    Ok(document)
}

fn locate(raw: &[u8], e: Syntax) -> SyntaxError {
    let before = &raw[..e.offset.min(raw.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let chars = |bytes: &[u8]| String::from_utf8_lossy(bytes).chars().count();
    SyntaxError {
        reason: e.reason,
        offset: e.offset,
        line,
        column: 1 + chars(&before[line_start..]),
        char_index: chars(before),
    }
}

struct Reader<'a> {
    /// The whole text, checked as UTF-8: a slice of it between ASCII bytes is a `str`.
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// A value read as some model type: the value, or the JSON type it turned out to have.
type Typed<T> = std::result::Result<T, Found>;

// The small readers below are forced inline: they run for every value of the document.
impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T> {
        Err(Syntax {
            reason,
            offset: self.pos,
        })
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The next byte after any whitespace (not consumed); an error at the end of the text.
    #[inline(always)]
    fn next_token(&mut self) -> Result<u8> {
        self.skip_space();
        match self.peek() {
            Some(b) => Ok(b),
            None => self.fail("unexpected end of data"),
        }
    }

    fn document(&mut self) -> Result<Field<Inventory<'a>>> {
        self.skip_space();
        if self.pos == self.bytes.len() {
            return self.fail("input data is empty");
        }
        let document = self.field::<Inventory<'a>>(1)?;
        self.skip_space();
        if self.pos != self.bytes.len() {
            return self.fail("unexpected content after document");
        }
        Ok(document)
    }

    /// A field's value: null reads as absent.
    #[inline(always)]
    fn field<T: FromJson<'a>>(&mut self, depth: usize) -> Result<Field<T>> {
        let first = self.next_token()?;
        if first == b'n' {
            self.literal(b"null", "invalid literal, expected 'null'")?;
            return Ok(Field::Absent);
        }
        Ok(match T::read(self, first, depth)? {
            Ok(value) => Field::Value(value),
            Err(found) => Field::Wrong(found),
        })
    }

    /// An array item: null is the wrong type.
    #[inline(always)]
    fn item<T: FromJson<'a>>(&mut self, depth: usize) -> Result<Item<T>> {
        Ok(match self.field::<T>(depth)? {
            Field::Value(value) => Item::Value(value),
            Field::Absent => Item::Wrong(Found::Null),
            Field::Wrong(found) => Item::Wrong(found),
        })
    }

    fn literal(&mut self, word: &'static [u8], reason: &'static str) -> Result<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail(reason)
        }
    }

    /// Reads any value (at `depth` if it is an array or object) and says what type it was.
    /// Arrays and objects are read with a list of the open ones rather than by recursion, so
    /// deep nesting (up to the limit) takes no stack.
    fn skip_value(&mut self, depth: usize) -> Result<Found> {
        let found = match self.next_token()? {
            b'[' => Found::Array,
            b'{' => Found::Object,
            first => return self.scalar(first),
        };
        let mut closers: Vec<u8> = Vec::new();
        'value: loop {
            match self.next_token()? {
                open @ (b'[' | b'{') => {
                    if depth + closers.len() > MAX_DEPTH {
                        return self.fail("depth limit exceeded");
                    }
                    self.pos += 1;
                    let close = if open == b'[' { b']' } else { b'}' };
                    if self.next_token()? == close {
                        self.pos += 1;
                    } else {
                        closers.push(close);
                        if close == b'}' {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                first => {
                    self.scalar(first)?;
                }
            }
            // A value has ended: close what ends with it, or go on to the next item.
            loop {
                let Some(&close) = closers.last() else {
                    return Ok(found);
                };
                match self.next_token()? {
                    b',' => {
                        self.pos += 1;
                        if self.next_token()? == close {
                            return self.fail("trailing comma is not allowed");
                        }
                        if close == b'}' {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    c if c == close => {
                        self.pos += 1;
                        closers.pop();
                    }
                    _ if close == b']' => {
                        return self.fail("unexpected character, expected ',' or ']'");
                    }
                    _ => return self.fail("unexpected character, expected ',' or '}'"),
                }
            }
        }
    }

    /// A value that is not an array or object (`first`, its first byte, next).
    fn scalar(&mut self, first: u8) -> Result<Found> {
        Ok(match first {
            b'"' => {
                self.string()?;
                Found::String
            }
            b't' => {
                self.literal(b"true", "invalid literal, expected 'true'")?;
                Found::Boolean
            }
            b'f' => {
                self.literal(b"false", "invalid literal, expected 'false'")?;
                Found::Boolean
            }
            b'n' => {
                self.literal(b"null", "invalid literal, expected 'null'")?;
                Found::Null
            }
            b'-' | b'0'..=b'9' => match self.number()? {
                Number::Int(_) => Found::Integer,
                Number::Float => Found::Number,
            },
            _ => return self.fail("unexpected character, expected a JSON value"),
        })
    }

    /// An object's key and its colon (the key's `"` expected next); the key.
    fn key(&mut self) -> Result<Text<'a>> {
        if self.next_token()? != b'"' {
            return self.fail("unexpected character, expected a string key");
        }
        let key = self.string()?;
        if self.next_token()? != b':' {
            return self.fail("unexpected character, expected ':' after key");
        }
        self.pos += 1;
        Ok(key)
    }

    /// An array at `depth` (its `[` next): `item` reads each item.
    fn array(&mut self, depth: usize, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail("depth limit exceeded");
        }
        self.pos += 1;
        if self.next_token()? == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.next_token()? {
                b',' => {
                    self.pos += 1;
                    if self.next_token()? == b']' {
                        return self.fail("trailing comma is not allowed");
                    }
                }
                b']' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("unexpected character, expected ',' or ']'"),
            }
        }
    }

    /// An object at `depth` (its `{` next): `member` reads the value of each key.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, Text<'a>) -> Result<()>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail("depth limit exceeded");
        }
        self.pos += 1;
        if self.next_token()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            member(self, key)?;
            match self.next_token()? {
                b',' => {
                    self.pos += 1;
                    if self.next_token()? == b'}' {
                        return self.fail("trailing comma is not allowed");
                    }
                }
                b'}' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("unexpected character, expected ',' or '}'"),
            }
        }
    }

    /// A string (its `"` next): a slice of the text unless it has escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<Text<'a>> {
        self.pos += 1;
        let start = self.pos;
        self.pos = special_byte(self.bytes, self.pos);
        match self.peek() {
            Some(b'"') => {
                let text = &self.text[start..self.pos];
                self.pos += 1;
                Ok(Cow::Borrowed(text))
            }
            Some(b'\\') => {
                let mut owned = String::from(&self.text[start..self.pos]);
                self.escaped_rest(&mut owned)?;
                Ok(Cow::Owned(owned))
            }
            Some(_) => self.fail("unexpected control character in string"),
            None => self.fail("unexpected end of data"),
        }
    }

    /// The rest of a string from its first escape, appended to `out`.
    fn escaped_rest(&mut self, out: &mut String) -> Result<()> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            out.push(self.unicode_escape()?);
                            continue;
                        }
                        None => return self.fail("unexpected end of data"),
                        _ => return self.fail("invalid escaped sequence in string"),
                    };
                    self.pos += 1;
                    out.push(c);
                }
                Some(_) => {
                    let start = self.pos;
                    self.pos = special_byte(self.bytes, self.pos);
                    if start == self.pos {
                        return self.fail("unexpected control character in string");
                    }
                    out.push_str(&self.text[start..self.pos]);
                }
                None => return self.fail("unexpected end of data"),
            }
        }
    }

    /// `\uXXXX` (the `u` next), with its low surrogate escape when it is a high surrogate.
    fn unicode_escape(&mut self) -> Result<char> {
        let escape_start = self.pos - 1;
        let high = self.hex4()?;
        let code = match high {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    self.pos = escape_start;
                    return self.fail("no low surrogate in string");
                }
                self.pos += 1;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    self.pos = escape_start;
                    return self.fail("invalid low surrogate in string");
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                self.pos = escape_start;
                return self.fail("invalid high surrogate in string");
            }
            code => code,
        };
        Ok(char::from_u32(code).expect("a scalar value: surrogates are paired above"))
    }

    /// Four hex digits after a `u` (the `u` next).
    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.pos + 1..self.pos + 5);
        let value = digits.and_then(|digits| {
            digits.iter().try_fold(0u32, |acc, &b| {
                let digit = (b as char).to_digit(16)?;
                Some(acc << 4 | digit)
            })
        });
        match value {
            Some(value) => {
                self.pos += 5;
                Ok(value)
            }
            None => self.fail("invalid escaped sequence in string"),
        }
    }

    /// A number (its first byte next): an integer when it has neither fraction nor exponent and
    /// fits 64 bits, else a number (which must be finite as a double).
    fn number(&mut self) -> Result<Number> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return self.fail("number with leading zero is not allowed");
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.fail("no digit after sign"),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("no digit after decimal point");
            }
            self.digits();
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("no digit after exponent sign");
            }
            self.digits();
            integer = false;
        }
        let text = &self.text[start..self.pos];
        if integer {
            if let Some(n) = integer_value(text) {
                return Ok(Number::Int(n));
            }
        }
        // Rust's parser rounds correctly, as orjson's: the same texts overflow.
        let value: f64 = text.parse().expect("the JSON number grammar is Rust's");
        if value.is_infinite() {
            self.pos = start;
            return self.fail("number is infinity when parsed as double");
        }
        Ok(Number::Float)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

enum Number {
    Int(Int),
    Float,
}

/// The value of an integer's text (`-?[0-9]+`) if it fits 64 bits, signed or unsigned.
fn integer_value(text: &str) -> Option<Int> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let mut value: u64 = 0;
    for &d in digits.as_bytes() {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let value = Int::from(value);
    if negative {
        (-value >= Int::from(i64::MIN)).then_some(-value)
    } else {
        Some(value)
    }
}

/// The position of the first `"`, `\` or control character at or after `pos` (or the end).
#[inline(always)]
fn special_byte(bytes: &[u8], mut pos: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Eight bytes at a time. Each test sets the high bit of every byte that is the one sought,
    // and possibly of bytes after it (a borrow runs upwards), never before: the lowest bit set
    // is the first special byte.
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let quote = zero_in(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let special = quote | backslash | control;
        if special != 0 {
            return pos + special.trailing_zeros() as usize / 8;
        }
        pos += 8;
    }
    while let Some(&b) = bytes.get(pos) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        pos += 1;
    }
    pos
}

/// A model type read from the JSON value next in the text (`first`, its first byte, is at the
/// reader's position): `Ok(Err(found))` when the value is of another type (it has been read
/// all the same).
trait FromJson<'a>: Sized {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>>;

    /// The value when its first byte alone shows it is of this type and it is quick to read
    /// (a string); `None`, nothing consumed, to go the general way (`read`).
    fn quick(_reader: &mut Reader<'a>, _first: u8) -> Result<Option<Self>> {
        Ok(None)
    }

    /// Room made first in an array of these.
    const ARRAY_CAPACITY: usize = 16;
}

impl<'a> FromJson<'a> for Text<'a> {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        if first == b'"' {
            reader.string().map(Ok)
        } else {
            reader.skip_value(depth).map(Err)
        }
    }

    fn quick(reader: &mut Reader<'a>, first: u8) -> Result<Option<Self>> {
        if first == b'"' {
            reader.string().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The one array of strings is the CPU flags: a modern x86 CPU has 100 to 150.
    const ARRAY_CAPACITY: usize = 128;
}

impl<'a> FromJson<'a> for Int {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        if let b'-' | b'0'..=b'9' = first {
            Ok(match reader.number()? {
                Number::Int(n) => Ok(n),
                Number::Float => Err(Found::Number),
            })
        } else {
            reader.skip_value(depth).map(Err)
        }
    }
}

impl<'a> FromJson<'a> for bool {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        match first {
            b't' => reader
                .literal(b"true", "invalid literal, expected 'true'")
                .map(|()| Ok(true)),
            b'f' => reader
                .literal(b"false", "invalid literal, expected 'false'")
                .map(|()| Ok(false)),
            _ => reader.skip_value(depth).map(Err),
        }
    }
}

impl<'a> FromJson<'a> for TlvType {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        Ok(Int::read(reader, first, depth)?.map(TlvType::from_int))
    }
}

impl<'a, T: FromJson<'a>> FromJson<'a> for Vec<Item<T>> {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        if first != b'[' {
            return reader.skip_value(depth).map(Err);
        }
        let mut items = Vec::with_capacity(T::ARRAY_CAPACITY);
        reader.array(depth, |reader| {
            let first = reader.next_token()?;
            items.push(match T::quick(reader, first)? {
                Some(value) => Item::Value(value),
                None => reader.item::<T>(depth + 1)?,
            });
            Ok(())
        })?;
        Ok(Ok(items))
    }
}

impl<'a> FromJson<'a> for Vec<Tlv<'a>> {
    fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
        if first != b'[' {
            return reader.skip_value(depth).map(Err);
        }
        let mut tlvs = Vec::with_capacity(16);
        reader.array(depth, |reader| {
            tlvs.push(tlv(reader, depth + 1)?);
            Ok(())
        })?;
        Ok(Ok(tlvs))
    }
}

/// An LLDP item: an array of exactly two values, an integer and a string, is a pair.
fn tlv<'a>(reader: &mut Reader<'a>, depth: usize) -> Result<Tlv<'a>> {
    if let Some(pair) = reader.plain_pair(depth) {
        return Ok(pair);
    }
    if reader.next_token()? != b'[' {
        reader.skip_value(depth)?;
        return Ok(Tlv::NotPair);
    }
    let (mut kind, mut value, mut count) = (Field::Absent, Field::Absent, 0);
    reader.array(depth, |reader| {
        match count {
            0 => kind = reader.field::<TlvType>(depth + 1)?,
            1 => value = reader.field::<Text<'a>>(depth + 1)?,
            _ => {
                reader.skip_value(depth + 1)?;
            }
        }
        count += 1;
        Ok(())
    })?;
    if count != 2 {
        return Ok(Tlv::NotPair);
    }
    Ok(match (kind, value) {
        (Field::Value(kind), Field::Value(value)) => Tlv::Pair(kind, value),
        (kind, value) => Tlv::WrongTypes(found(kind, Found::Integer), found(value, Found::String)),
    })
}

impl<'a> Reader<'a> {
    /// The common LLDP item, `[123,"hex"]` written without spaces or escapes, read directly;
    /// `None` (nothing consumed) for anything else, which the general path reads.
    fn plain_pair(&mut self, depth: usize) -> Option<Tlv<'a>> {
        let start = self.pos;
        let rest = &self.bytes[start..];
        let digits = rest
            .iter()
            .skip(1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let (kind_end, quote) = (1 + digits, 2 + digits);
        let plain = depth <= MAX_DEPTH
            && rest.first() == Some(&b'[')
            && (1..=3).contains(&digits)
            && (digits == 1 || rest[1] != b'0')
            && rest.get(kind_end) == Some(&b',')
            && rest.get(quote) == Some(&b'"');
        if !plain {
            return None;
        }
        let value_start = start + quote + 1;
        let end = special_byte(self.bytes, value_start);
        if self.bytes.get(end) != Some(&b'"') || self.bytes.get(end + 1) != Some(&b']') {
            return None;
        }
        let kind = self.text[start + 1..start + kind_end]
            .parse()
            .map_or(TlvType::Other, TlvType::from_int);
        self.pos = end + 2;
        Some(Tlv::Pair(kind, Cow::Borrowed(&self.text[value_start..end])))
    }
}

/// What a field that is not of the expected type held (`right`: the type of a `Value`).
fn found<T>(field: Field<T>, right: Found) -> Found {
    match field {
        Field::Absent => Found::Null,
        Field::Value(_) => right,
        Field::Wrong(found) => found,
    }
}

/// Reads an object into a model struct: each key it uses sets its field (a later duplicate
/// overwrites it, as orjson keeps the last), other keys are read and dropped.
macro_rules! objects {
    ($($name:ident $(<$lt:lifetime>)? { $($field:ident),* $(,)? })*) => {
        $(impl<'a> FromJson<'a> for $name $(<$lt>)? {
            fn read(reader: &mut Reader<'a>, first: u8, depth: usize) -> Result<Typed<Self>> {
                if first != b'{' {
                    return reader.skip_value(depth).map(Err);
                }
                let mut object = Self::default();
                reader.object(depth, |reader, key| {
                    match key.as_ref() {
                        $(stringify!($field) => object.$field = reader.field(depth + 1)?,)*
                        _ => {
                            reader.skip_value(depth + 1)?;
                        }
                    }
                    Ok(())
                })?;
                Ok(Ok(object))
            }
        })*
    };
}

objects! {
    Inventory<'a> { interfaces, disks, cpu, memory, system_vendor, boot, hostname }
    Interface<'a> {
        name, mac_address, ipv4_address, ipv6_address, vendor, product, speed_mbps, lldp,
        pci_address,
    }
    Disk<'a> {
        name, by_path, rotational, size, vendor, model, serial, wwn, wwn_vendor_extension,
        wwn_with_extension, hctl,
    }
    Cpu<'a> { architecture, model_name, frequency, count, flags }
    Memory { physical_mb }
    SystemVendor<'a> { manufacturer, product_name, serial_number, firmware }
    Firmware<'a> { vendor, version, build_date, date }
    Boot<'a> { pxe_interface }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(raw: &str) -> Inventory<'_> {
        match read(raw.as_bytes()).unwrap() {
            Field::Value(inventory) => inventory,
            other => panic!("not an object: {other:?}"),
        }
    }

    fn refused(raw: &[u8]) -> SyntaxError {
        read(raw).unwrap_err()
    }

    fn interface<'a>(inv: &'a Inventory<'_>) -> &'a Interface<'a> {
        match &inv.interfaces.get().unwrap()[0] {
            Item::Value(interface) => interface,
            Item::Wrong(found) => panic!("{found:?}"),
        }
    }

    #[test]
    fn fields_keep_their_json_type() {
        let inv = inventory(
            r#"{"interfaces":[{"name":"eth0","speed_mbps":"1000","mac_address":null,
                "vendor":1.5,"product":[1],"lldp":{}}, 7, null],
                "hostname":true,"cpu":{"count":-9223372036854775808,"flags":["a",1,null]},
                "memory":{"physical_mb":18446744073709551615},"disks":[],"boot":"x"}"#,
        );
        let nic = interface(&inv);
        assert_eq!(nic.name, Field::Value(Cow::Borrowed("eth0")));
        assert_eq!(nic.speed_mbps, Field::Wrong(Found::String));
        assert_eq!(nic.mac_address, Field::Absent);
        assert_eq!(nic.vendor, Field::Wrong(Found::Number));
        assert_eq!(nic.product, Field::Wrong(Found::Array));
        assert_eq!(nic.lldp, Field::Wrong(Found::Object));
        let items = inv.interfaces.get().unwrap();
        assert_eq!(items[1], Item::Wrong(Found::Integer));
        assert_eq!(items[2], Item::Wrong(Found::Null));
        assert_eq!(inv.hostname, Field::Wrong(Found::Boolean));
        let cpu = inv.cpu.get().unwrap();
        assert_eq!(cpu.count, Field::Value(Int::from(i64::MIN)));
        let flags = cpu.flags.get().unwrap();
        assert_eq!(
            flags[1..],
            [Item::Wrong(Found::Integer), Item::Wrong(Found::Null)]
        );
        let memory = inv.memory.get().unwrap();
        assert_eq!(memory.physical_mb, Field::Value(Int::from(u64::MAX)));
        assert_eq!(inv.disks, Field::Value(vec![]));
        assert_eq!(inv.boot, Field::Wrong(Found::String));
    }

    #[test]
    fn numbers_beyond_64_bits_are_numbers() {
        let inv = inventory(r#"{"memory":{"physical_mb":18446744073709551616}}"#);
        assert_eq!(
            inv.memory.get().unwrap().physical_mb,
            Field::Wrong(Found::Number)
        );
        let inv = inventory(r#"{"memory":{"physical_mb":-9223372036854775809}}"#);
        assert_eq!(
            inv.memory.get().unwrap().physical_mb,
            Field::Wrong(Found::Number)
        );
        let inv = inventory(r#"{"memory":{"physical_mb":-0}}"#);
        assert_eq!(inv.memory.get().unwrap().physical_mb, Field::Value(0));
        let inv = inventory(r#"{"memory":{"physical_mb":1e2}}"#);
        assert_eq!(
            inv.memory.get().unwrap().physical_mb,
            Field::Wrong(Found::Number)
        );
    }

    #[test]
    fn escapes_and_duplicate_keys() {
        let inv = inventory(
            r#"{"hostname":"a","host\u006eame":"b\u00e9\ud83d\ude00\n\"\/","cpu":{},"cpu":7}"#,
        );
        assert_eq!(
            inv.hostname,
            Field::Value(Cow::Owned("b\u{e9}\u{1f600}\n\"/".into()))
        );
        assert_eq!(inv.cpu, Field::Wrong(Found::Integer));
    }

    #[test]
    fn lldp_items() {
        let raw = br#"{"interfaces":[{"lldp":[[1,"04aa"],[ 2 , "05" ],[127,"x",3],[true,"x"],
            [5,null],"x",[],[300,"\u0030"]]}]}"#;
        let Field::Value(inv) = read(raw).unwrap() else {
            panic!()
        };
        let tlvs = interface(&inv).lldp.get().unwrap();
        assert_eq!(
            tlvs,
            &vec![
                Tlv::Pair(TlvType::ChassisId, Cow::Borrowed("04aa")),
                Tlv::Pair(TlvType::PortId, Cow::Borrowed("05")),
                Tlv::NotPair,
                Tlv::WrongTypes(Found::Boolean, Found::String),
                Tlv::WrongTypes(Found::Integer, Found::Null),
                Tlv::NotPair,
                Tlv::NotPair,
                Tlv::Pair(TlvType::Other, Cow::Owned("0".into())),
            ]
        );
        let leading_zero = br#"{"interfaces":[{"lldp":[[01,"a"]]}]}"#;
        assert_eq!(
            refused(leading_zero).reason,
            "number with leading zero is not allowed"
        );
    }

    #[test]
    fn nesting_is_limited_as_orjson_limits_it() {
        let nested = |n: usize| {
            let mut raw = br#"{"x":"#.to_vec();
            raw.extend(b"[".repeat(n));
            raw.extend(b"]".repeat(n));
            raw.push(b'}');
            raw
        };
        // The document is one level: 1023 arrays inside it make 1024.
        assert!(read(&nested(MAX_DEPTH - 1)).is_ok());
        assert_eq!(refused(&nested(MAX_DEPTH)).reason, "depth limit exceeded");
        assert!(read(
            &b"["
                .repeat(MAX_DEPTH)
                .iter()
                .chain(b"]".repeat(MAX_DEPTH).iter())
                .copied()
                .collect::<Vec<_>>()
        )
        .is_ok());
    }

    #[test]
    fn not_json() {
        let cases: [(&[u8], &str); 16] = [
            (b"", "input data is empty"),
            (b"{", "unexpected end of data"),
            (b"{\"a\":1,}", "trailing comma is not allowed"),
            (b"[1,]", "trailing comma is not allowed"),
            (b"{\"a\" 1}", "unexpected character, expected ':' after key"),
            (b"{} x", "unexpected content after document"),
            (b"01", "number with leading zero is not allowed"),
            (b"1.", "no digit after decimal point"),
            (b"1e+", "no digit after exponent sign"),
            (b"-", "no digit after sign"),
            (b"1e400", "number is infinity when parsed as double"),
            (b"\"\\ud800\"", "no low surrogate in string"),
            (b"\"\\udc00\"", "invalid high surrogate in string"),
            (b"\"a\x01\"", "unexpected control character in string"),
            (
                b"\"\xff\"",
                "str is not valid UTF-8: surrogates not allowed",
            ),
            (
                b"\xef\xbb\xbf{}",
                "unexpected character, expected a JSON value",
            ),
        ];
        for (raw, reason) in cases {
            assert_eq!(
                refused(raw).reason,
                reason,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let error = refused(b"{\n  \"a\": tru }");
        assert_eq!(
            error.to_string(),
            "invalid literal, expected 'true': line 2 column 8 (char 9)"
        );
    }

    #[test]
    fn strings_are_found_eight_bytes_at_a_time() {
        let text = b"0123456789abcdef0123456789\"tail";
        assert_eq!(special_byte(text, 0), 26);
        assert_eq!(special_byte(b"abc\\", 0), 3);
        assert_eq!(special_byte(b"abcdefg\x1fh", 0), 7);
        assert_eq!(special_byte("\u{e9}\u{e9}\u{e9}\u{e9}\"".as_bytes(), 0), 8);
        assert_eq!(special_byte(b"abc", 0), 3);
        assert_eq!(
            special_byte(b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x20\"", 0),
            9
        );
    }
}
