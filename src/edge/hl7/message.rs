//! HL7 v2 messages as text: the separators a message declares in MSH, the character set it declares
//! in MSH-18, escape sequences, and access to fields by HL7's own numbering (PID-3.1, MSH-9.2).
//!
//! A small parser of our own rather than a crate: the Rust HL7 v2 crates seen were young or
//! unmaintained, and none decoded MSH-18 character sets; the grammar needed here is small.

use std::fmt;

/// The separators of one message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Between fields, usually `|`.
    pub field: char,
    /// Between components, usually `^`.
    pub component: char,
    /// Between repetitions, usually `~`.
    pub repetition: char,
    /// Starts and ends an escape sequence, usually `\`.
    pub escape: Option<char>,
    /// Between subcomponents, usually `&`.
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as it is written for these separators.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component);
        s.push(self.repetition);
        // MSH-2 is positional: without an escape character the subcomponent separator cannot be
        // written, and is read back as `&`, which it then is (see `read_header`).
        if let Some(e) = self.escape {
            s.push(e);
            s.push(self.subcomponent);
        }
        s
    }

    /// Escapes `text` so that it reads back as itself inside a field (line breaks as `\.br\`).
    pub fn escape(&self, text: &str) -> String {
        let Some(esc) = self.escape else {
            // Without an escape character the separators cannot be sent: drop them.
            return text
                .chars()
                .filter(|c| !self.is_separator(*c) && *c != '\r' && *c != '\n')
                .collect();
        };
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = match c {
                c if c == self.field => Some("F"),
                c if c == self.component => Some("S"),
                c if c == self.repetition => Some("R"),
                c if c == self.subcomponent => Some("T"),
                c if c == esc => Some("E"),
                '\n' => Some(".br"),
                '\r' => None,
                _ => {
                    out.push(c);
                    continue;
                }
            };
            if let Some(code) = code {
                out.push(esc);
                out.push_str(code);
                out.push(esc);
            }
        }
        out
    }

    fn is_separator(&self, c: char) -> bool {
        c == self.field
            || c == self.component
            || c == self.repetition
            || c == self.subcomponent
            || Some(c) == self.escape
    }

    /// Decodes the escape sequences of one leaf value (a component or subcomponent).
    pub fn unescape(&self, raw: &str) -> String {
        let Some(esc) = self.escape else {
            return raw.to_string();
        };
        if !raw.contains(esc) {
            return raw.to_string();
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find(esc) {
            out.push_str(&rest[..start]);
            let after = &rest[start + esc.len_utf8()..];
            let Some(end) = after.find(esc) else {
                // An escape character with no closing one is taken literally.
                out.push_str(&rest[start..]);
                return out;
            };
            let code = &after[..end];
            match code {
                "F" => out.push(self.field),
                "S" => out.push(self.component),
                "R" => out.push(self.repetition),
                "T" => out.push(self.subcomponent),
                "E" => out.push(esc),
                ".br" => out.push('\n'),
                // Highlighting on and off: no meaning in plain text.
                "H" | "N" => {}
                _ if code.starts_with('X') => out.push_str(&hex_text(&code[1..])),
                // Other sequences (character set switches, locally defined ones) carry no text we
                // can render; they are dropped rather than shown as codes.
                _ => {}
            }
            rest = &after[end + esc.len_utf8()..];
        }
        out.push_str(rest);
        out
    }
}

/// `\Xhhhh\`: bytes in hexadecimal, read as UTF-8 (invalid bytes become U+FFFD).
fn hex_text(hex: &str) -> String {
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A character set named in MSH-18 that the edge can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// MSH-18 empty: HL7 says ASCII; UTF-8 is accepted too, as many engines send it unlabelled.
    Unlabelled,
    /// `ASCII`.
    Ascii,
    /// `8859/1` (Latin-1).
    Latin1,
    /// `UNICODE UTF-8`.
    Utf8,
}

impl Charset {
    /// The MSH-18 value, for replies.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unlabelled => "",
            Self::Ascii => "ASCII",
            Self::Latin1 => "8859/1",
            Self::Utf8 => "UNICODE UTF-8",
        }
    }

    /// MSH-18 as written with `delims`: as it is read, unescaped (a reader finds the character
    /// set before it knows how to decode escapes), and so in a spelling that holds neither the
    /// field nor the repetition separator.
    pub fn label_in(self, delims: &Delimiters) -> &'static str {
        let label = self.label();
        let clashes = |l: &str| l.contains([delims.field, delims.repetition]);
        match self {
            Self::Utf8 if clashes(label) => "UTF8",
            _ => label,
        }
    }

    fn from_label(label: &str) -> Option<Self> {
        match label.trim().to_ascii_uppercase().as_str() {
            "" => Some(Self::Unlabelled),
            "ASCII" => Some(Self::Ascii),
            "8859/1" => Some(Self::Latin1),
            "UNICODE UTF-8" | "UTF-8" | "UTF8" => Some(Self::Utf8),
            _ => None,
        }
    }

    /// Bytes of `text` in this character set; what it cannot hold becomes `?`.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Self::Unlabelled | Self::Utf8 => text.as_bytes().to_vec(),
            Self::Ascii => text
                .chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
            Self::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
        }
    }

    fn decode(self, bytes: &[u8]) -> Result<String, ParseError> {
        match self {
            Self::Unlabelled | Self::Utf8 => String::from_utf8(bytes.to_vec())
                .map_err(|_| ParseError::Undecodable(self.label_or("UTF-8"))),
            Self::Ascii if bytes.is_ascii() => Ok(bytes.iter().map(|b| char::from(*b)).collect()),
            Self::Ascii => Err(ParseError::Undecodable("ASCII".into())),
            Self::Latin1 => Ok(bytes.iter().map(|b| char::from(*b)).collect()),
        }
    }

    fn label_or(self, default: &str) -> String {
        match self.label() {
            "" => default.to_string(),
            l => l.to_string(),
        }
    }
}

/// Why a message could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first segment is not MSH.
    #[error("the message does not start with an MSH segment")]
    NoMsh,
    /// MSH-1/MSH-2 do not declare usable separators.
    #[error("MSH-1 and MSH-2 do not declare usable separators")]
    BadSeparators,
    /// MSH-18 names a character set the edge does not read.
    #[error("the character set {0:?} in MSH-18 is not supported")]
    UnsupportedCharset(String),
    /// The bytes are not valid in the declared character set.
    #[error("the message is not valid {0}")]
    Undecodable(String),
}

/// One segment: its name and its fields, still escaped.
#[derive(Clone, PartialEq, Eq)]
pub struct Segment {
    /// The three-letter name, e.g. `PID`.
    pub name: String,
    /// `fields[n]` is field n in HL7 numbering (`fields[0]` is the name; for MSH, `fields[1]` is
    /// the field separator and `fields[2]` the encoding characters).
    fields: Vec<String>,
}

impl fmt::Debug for Segment {
    // Segments hold patient data: only the name and the field count are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Segment({}, {} fields)", self.name, self.fields.len())
    }
}

impl Segment {
    /// Field `n` as sent (escaped), empty when absent.
    pub fn raw(&self, n: usize) -> &str {
        self.fields.get(n).map_or("", String::as_str)
    }

    /// Number of the last field present.
    pub fn len(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }

    /// True when the segment has no fields after its name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its separators.
    pub delims: Delimiters,
    /// Its character set (MSH-18).
    pub charset: Charset,
    /// Its segments in order.
    pub segments: Vec<Segment>,
}

/// A position in a message, for ERR segments: segment name, which occurrence (1-based), field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Segment name.
    pub segment: &'static str,
    /// Which occurrence of the segment, from 1.
    pub sequence: usize,
    /// Field number, 0 for the whole segment.
    pub field: usize,
}

impl Message {
    /// Parses a message from the bytes of one MLLP frame.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let (delims, charset) = read_header(bytes)?;
        let text = charset.decode(bytes)?;
        let segments = text
            .split(['\r', '\n'])
            .map(|line| line.trim_start_matches(['\u{feff}']))
            .filter(|line| !line.trim().is_empty())
            .map(|line| split_segment(line, &delims))
            .collect::<Vec<_>>();
        Ok(Self {
            delims,
            charset,
            segments,
        })
    }

    /// The MSH segment (always the first).
    pub fn msh(&self) -> &Segment {
        &self.segments[0]
    }

    /// Every segment with this name, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// The first segment with this name.
    pub fn first(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// One value of a field: repetition `rep`, component `comp`, subcomponent `sub` (all from 1,
    /// as HL7 numbers them), unescaped; empty when absent.
    pub fn value(
        &self,
        seg: &Segment,
        field: usize,
        rep: usize,
        comp: usize,
        sub: usize,
    ) -> String {
        let d = &self.delims;
        let raw = if seg.name == "MSH" && field <= 2 {
            // MSH-1 and MSH-2 are the separators themselves, never split or unescaped.
            return seg.raw(field).to_string();
        } else {
            seg.raw(field)
        };
        let value = raw
            .split(d.repetition)
            .nth(rep.saturating_sub(1))
            .and_then(|r| r.split(d.component).nth(comp.saturating_sub(1)))
            .and_then(|c| c.split(d.subcomponent).nth(sub.saturating_sub(1)))
            .unwrap_or("");
        d.unescape(value)
    }

    /// Component `comp` of the first repetition of a field, unescaped.
    pub fn component(&self, seg: &Segment, field: usize, comp: usize) -> String {
        self.value(seg, field, 1, comp, 1)
    }

    /// The repetitions of a field, each still escaped (split further with [`Message::split_components`]).
    pub fn repetitions<'a>(&self, seg: &'a Segment, field: usize) -> Vec<&'a str> {
        let raw = seg.raw(field);
        if raw.is_empty() {
            return Vec::new();
        }
        raw.split(self.delims.repetition).collect()
    }

    /// The unescaped components of one repetition (first subcomponent of each).
    pub fn split_components(&self, repetition: &str) -> Vec<String> {
        repetition
            .split(self.delims.component)
            .map(|c| {
                self.delims
                    .unescape(c.split(self.delims.subcomponent).next().unwrap_or(""))
            })
            .collect()
    }

    /// MSH-n as text (first component), trimmed.
    pub fn header(&self, field: usize) -> String {
        self.component(self.msh(), field, 1).trim().to_string()
    }
}

/// Reads the separators and character set from the MSH segment's bytes, which are ASCII whatever
/// the message's character set.
fn read_header(bytes: &[u8]) -> Result<(Delimiters, Charset), ParseError> {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let bytes = bytes[start..]
        .strip_prefix(&[0xef, 0xbb, 0xbf])
        .unwrap_or(&bytes[start..]);
    if !bytes.starts_with(b"MSH") {
        return Err(ParseError::NoMsh);
    }
    let end = bytes
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let header = &bytes[..end];
    let field = *header.get(3).ok_or(ParseError::BadSeparators)?;
    let encoding: Vec<u8> = header[4..]
        .iter()
        .take_while(|b| **b != field)
        .copied()
        .collect();
    let usable = |b: u8| b.is_ascii_graphic() && !b.is_ascii_alphanumeric();
    if !usable(field)
        || encoding.len() < 2
        || encoding.len() > 5
        || !encoding.iter().all(|b| usable(*b))
    {
        return Err(ParseError::BadSeparators);
    }
    let mut distinct = encoding.clone();
    distinct.push(field);
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != encoding.len() + 1 {
        return Err(ParseError::BadSeparators);
    }
    // Without a fourth character the subcomponent separator is `&`, which must then not be one
    // already declared: an ACK written with both would not read back.
    if encoding.len() < 4 && distinct.contains(&b'&') {
        return Err(ParseError::BadSeparators);
    }
    let delims = Delimiters {
        field: char::from(field),
        component: char::from(encoding[0]),
        repetition: char::from(encoding[1]),
        escape: encoding.get(2).map(|b| char::from(*b)),
        subcomponent: encoding.get(3).map_or('&', |b| char::from(*b)),
    };
    // MSH-18 is the 17th separator-delimited part after "MSH" (MSH-1 is the separator itself).
    let label = header
        .split(|b| *b == field)
        .nth(17)
        .map(|f| {
            let first = f
                .split(|b| char::from(*b) == delims.repetition)
                .next()
                .unwrap_or(&[]);
            String::from_utf8_lossy(first).into_owned()
        })
        .unwrap_or_default();
    let charset =
        Charset::from_label(&label).ok_or_else(|| ParseError::UnsupportedCharset(label.clone()))?;
    Ok((delims, charset))
}

fn split_segment(line: &str, d: &Delimiters) -> Segment {
    let mut parts = line.split(d.field);
    let name = parts.next().unwrap_or("").trim().to_string();
    let mut fields = vec![name.clone()];
    if name == "MSH" {
        fields.push(d.field.to_string());
    }
    fields.extend(parts.map(str::to_string));
    Segment { name, fields }
}

/// Builds messages segment by segment with the given separators.
#[derive(Debug)]
pub struct Writer {
    delims: Delimiters,
    out: String,
}

impl Writer {
    /// An empty message.
    pub fn new(delims: Delimiters) -> Self {
        Self {
            delims,
            out: String::new(),
        }
    }

    /// The separators in use.
    pub fn delims(&self) -> &Delimiters {
        &self.delims
    }

    /// Appends a segment; `fields[i]` is field i+1, already joined with [`Writer::join`] or
    /// escaped with [`Writer::text`]. Trailing empty fields are dropped.
    pub fn segment(&mut self, name: &str, fields: &[String]) {
        let last = fields
            .iter()
            .rposition(|f| !f.is_empty())
            .map_or(0, |i| i + 1);
        self.out.push_str(name);
        if name == "MSH" {
            // MSH-1 is the separator itself; `fields` starts at MSH-2.
            self.out.push(self.delims.field);
            self.out
                .push_str(&fields.first().cloned().unwrap_or_default());
            for f in fields.iter().take(last).skip(1) {
                self.out.push(self.delims.field);
                self.out.push_str(f);
            }
        } else {
            for f in &fields[..last] {
                self.out.push(self.delims.field);
                self.out.push_str(f);
            }
        }
        self.out.push('\r');
    }

    /// Escaped text for a field or component.
    pub fn text(&self, value: &str) -> String {
        self.delims.escape(value)
    }

    /// Components, each escaped, joined; trailing empty ones dropped.
    pub fn join(&self, components: &[&str]) -> String {
        let last = components
            .iter()
            .rposition(|c| !c.is_empty())
            .map_or(0, |i| i + 1);
        components[..last]
            .iter()
            .map(|c| self.delims.escape(c))
            .collect::<Vec<_>>()
            .join(&self.delims.component.to_string())
    }

    /// The message text, segments ended by carriage returns.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORM: &str = "MSH|^~\\&|EPR|RJ1|LABAID|LABAID|20240603101500||ORM^O01|MSG0001|P|2.3\r\
        PID|1||1234^^^RJ1^MR~9434765919^^^NHS^NH||O\\S\\Brien^Se\\T\\n||19700101\r\
        NTE|1||line one\\.br\\line two \\F\\ with \\E\\ and \\X41\\\r";

    #[test]
    fn fields_components_and_repetitions_follow_hl7_numbering() {
        let m = Message::parse(ORM.as_bytes()).unwrap();
        let msh = m.msh();
        assert_eq!(m.value(msh, 1, 1, 1, 1), "|");
        assert_eq!(m.value(msh, 2, 1, 1, 1), "^~\\&");
        assert_eq!(m.header(3), "EPR");
        assert_eq!(m.component(msh, 9, 2), "O01");
        assert_eq!(m.header(10), "MSG0001");
        assert_eq!(m.header(12), "2.3");
        let pid = m.first("PID").unwrap();
        let reps = m.repetitions(pid, 3);
        assert_eq!(reps.len(), 2);
        assert_eq!(m.split_components(reps[1])[4], "NH");
        assert_eq!(m.component(pid, 5, 1), "O^Brien");
        assert_eq!(m.value(pid, 5, 1, 2, 1), "Se&n");
        assert_eq!(m.component(pid, 7, 1), "19700101");
    }

    #[test]
    fn escapes_decode_and_encode_back() {
        let m = Message::parse(ORM.as_bytes()).unwrap();
        let nte = m.first("NTE").unwrap();
        assert_eq!(m.component(nte, 3, 1), "line one\nline two | with \\ and A");
        let d = Delimiters::default();
        let text = "a|b^c~d&e\\f\ng";
        assert_eq!(d.escape(text), "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f\\.br\\g");
        assert_eq!(d.unescape(&d.escape(text)), text);
    }

    #[test]
    fn separators_are_taken_from_msh() {
        let raw = "MSH#:*@%#EPR#RJ1#L#L#20240603##OML:O21#X1#P#2.5.1\rPID#1##9434765919:::NHS:NH*77:::RJ1:MR##Doe:Jo";
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.delims.field, '#');
        assert_eq!(m.delims.repetition, '*');
        assert_eq!(m.component(m.msh(), 9, 1), "OML");
        let pid = m.first("PID").unwrap();
        assert_eq!(m.repetitions(pid, 3).len(), 2);
        assert_eq!(m.component(pid, 5, 2), "Jo");
    }

    #[test]
    fn msh_18_chooses_the_character_set() {
        let latin1 =
            b"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.3|||||GBR|8859/1\rPID|1||||Ren\xe9e";
        let m = Message::parse(latin1).unwrap();
        assert_eq!(m.charset, Charset::Latin1);
        assert_eq!(m.component(m.first("PID").unwrap(), 5, 1), "Renée");

        let utf8 =
            "MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.5.1|||||GBR|UNICODE UTF-8\rPID|1||||Renée";
        let m = Message::parse(utf8.as_bytes()).unwrap();
        assert_eq!(m.component(m.first("PID").unwrap(), 5, 1), "Renée");

        let bad_utf8 = b"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.5.1|||||GBR|UNICODE UTF-8\rPID|1||||Ren\xe9e";
        assert!(matches!(
            Message::parse(bad_utf8),
            Err(ParseError::Undecodable(_))
        ));
        let ascii = b"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.3|||||GBR|ASCII\rPID|1||||Ren\xe9e";
        assert!(matches!(
            Message::parse(ascii),
            Err(ParseError::Undecodable(_))
        ));
        let jis = b"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.3|||||JPN|ISO IR87\r";
        assert_eq!(
            Message::parse(jis).unwrap_err(),
            ParseError::UnsupportedCharset("ISO IR87".into())
        );
        assert_eq!(Charset::Latin1.encode("Renée"), b"Ren\xe9e");
    }

    #[test]
    fn a_message_without_msh_or_separators_is_refused() {
        assert_eq!(Message::parse(b"PID|1||x").unwrap_err(), ParseError::NoMsh);
        assert_eq!(Message::parse(b"").unwrap_err(), ParseError::NoMsh);
        assert_eq!(
            Message::parse(b"MSH|^^\\&|A").unwrap_err(),
            ParseError::BadSeparators
        );
        assert_eq!(
            Message::parse(b"MSH").unwrap_err(),
            ParseError::BadSeparators
        );
    }

    #[test]
    fn an_undeclared_subcomponent_separator_may_not_collide_with_a_declared_one() {
        // `~\&` declares `&` as the escape, and `MSH&` as the field separator; the default
        // subcomponent separator `&` would repeat it (found by the hl7_parse fuzz target).
        for header in ["MSH|~\\&|EPR|RJ1\r", "MSH&^~&EPR\r"] {
            assert!(
                matches!(
                    Message::parse(header.as_bytes()),
                    Err(ParseError::BadSeparators)
                ),
                "{header:?}"
            );
        }
        // What the edge writes in an ACK's MSH-2 reads back as the same separators, also with
        // no escape character (`MSH\^~\`, the second input found).
        for (header, written) in [
            ("MSH|^~\\|EPR\r", "^~\\&"),
            ("MSH\\^~\\EPR\r", "^~"),
            ("MSH|^~|EPR\r", "^~"),
            ("MSH#$%!*#EPR\r", "$%!*"),
        ] {
            let m = Message::parse(header.as_bytes()).expect(header);
            assert_eq!(m.delims.encoding_characters(), written, "{header:?}");
            let f = m.delims.field;
            let ack = format!("MSH{f}{written}{f}LABAID\r");
            assert_eq!(
                Message::parse(ack.as_bytes()).expect("reads back").delims,
                m.delims,
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_writer_escapes_and_drops_trailing_empties() {
        let mut w = Writer::new(Delimiters::default());
        let msh2 = w.delims().encoding_characters();
        w.segment("MSH", &[msh2, "LABAID".into(), String::new()]);
        let comps = w.join(&["K", "Potassium|x", ""]);
        w.segment("OBR", &["1".into(), comps, String::new()]);
        assert_eq!(w.finish(), "MSH|^~\\&|LABAID\rOBR|1|K^Potassium\\F\\x\r");
    }
}
