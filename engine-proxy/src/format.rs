//! The engine's two body formats, JSON and ORCA's typed XML, to and from one tree.
//!
//! JSON is `{"acceptreq": {...}}`. XML is the same tree with a type on every element:
//!
//! ```xml
//! <data><acceptreq type="record"><Patient_ID type="string">1</Patient_ID></acceptreq></data>
//! <xmlio2><acceptlstres type="record"><List type="array"><List_child type="record">…
//! ```
//!
//! Requests arrive wrapped in `<data>`, responses leave wrapped in `<xmlio2>`; arrays hold
//! `NAME_child` elements. Handlers see only `serde_json::Value`.

use quick_xml::events::Event;
use serde_json::{Map, Value};

/// Which format a call speaks: `?format=json` asks for JSON, anything else is XML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// The format named by a query string.
    pub fn from_query(query: Option<&str>) -> Format {
        let json = query
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.eq_ignore_ascii_case("format=json"));
        if json { Format::Json } else { Format::Xml }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
        }
    }
}

/// Parses a request body into an object whose keys are the request records (`acceptreq`, …).
pub fn parse(format: Format, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match format {
        Format::Json => match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the JSON body is not an object".into()),
            Err(e) => Err(format!("the JSON body does not parse: {e}")),
        },
        Format::Xml => parse_xml(bytes),
    }
}

/// Renders a response object (`{"acceptres": {...}}`) in the call's format.
pub fn render(format: Format, response: &Map<String, Value>) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(response).unwrap_or_default(),
        Format::Xml => {
            let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xmlio2>");
            for (name, value) in response {
                write_element(&mut out, name, value);
            }
            out.push_str("</xmlio2>\n");
            out.into_bytes()
        }
    }
}

/// The `Api_Result` of an engine answer, if it parses.
pub fn api_result(format: Format, bytes: &[u8]) -> Option<String> {
    record_field(format, bytes, "Api_Result")
}

/// The `Api_Result_Message` of an engine answer, if it parses.
pub fn api_result_message(format: Format, bytes: &[u8]) -> Option<String> {
    record_field(format, bytes, "Api_Result_Message")
}

/// The `Request_Number` of a request (`{"acceptreq": {"Request_Number": "01", …}}`), which picks
/// what some calls do; `None` when the body does not parse or has none.
pub fn request_number(format: Format, bytes: &[u8]) -> Option<String> {
    record_field(format, bytes, "Request_Number")
}

/// A text field of a body's first record that has it.
fn record_field(format: Format, bytes: &[u8], name: &str) -> Option<String> {
    let top = parse(format, bytes).ok()?;
    top.values()
        .find_map(|record| record.get(name)?.as_str().map(str::to_owned))
}

/// Whether an `Api_Result` means the engine did what was asked: all zeros is success, `W…` a
/// warning on a success.
pub fn is_success(code: &str) -> bool {
    code.starts_with('W') || (!code.is_empty() && code.bytes().all(|b| b == b'0'))
}

/// An answer in the engine's own shape, for answers the gateway gives in the engine's place:
/// `{"<name>res": {"Api_Result": code, "Api_Result_Message": message}}`, where the record is
/// named after the request's (`acceptreq` → `acceptres`) or, without one, after the call.
pub fn engine_answer(format: Format, path: &str, request: &[u8], code: &str, message: &str) -> Vec<u8> {
    // The names come from the terminal (its body, its path): only a plain XML name is used, so
    // that the answer is well-formed in either format.
    let root = parse(format, request)
        .ok()
        .and_then(|m| {
            m.keys()
                .find_map(|k| k.strip_suffix("req").map(|r| format!("{r}res")))
        })
        .filter(|name| is_plain_name(name))
        .or_else(|| {
            let name = path.rsplit('/').find(|s| !s.is_empty())?;
            Some(format!("{name}res")).filter(|name| is_plain_name(name))
        })
        .unwrap_or_else(|| "apires".to_owned());
    let mut record = Map::new();
    record.insert("Api_Result".into(), Value::String(code.into()));
    record.insert("Api_Result_Message".into(), Value::String(message.into()));
    let mut top = Map::new();
    top.insert(root, Value::Object(record));
    render(format, &top)
}

/// An XML name of the engine's kind: ASCII letters, digits, `_`, `-` and `.`, not beginning with
/// a digit, `-` or `.`.
fn is_plain_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn write_element(out: &mut String, name: &str, value: &Value) {
    let text = match value {
        Value::Null => return,
        Value::Object(map) => {
            out.push_str(&format!("<{name} type=\"record\">"));
            for (k, v) in map {
                write_element(out, k, v);
            }
            out.push_str(&format!("</{name}>"));
            return;
        }
        Value::Array(items) => {
            out.push_str(&format!("<{name} type=\"array\">"));
            let child = format!("{name}_child");
            for item in items {
                write_element(out, &child, item);
            }
            out.push_str(&format!("</{name}>"));
            return;
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    out.push_str(&format!(
        "<{name} type=\"string\">{}</{name}>",
        quick_xml::escape::escape(text.as_str())
    ));
}

/// An element being read: a record, an array, or text.
enum Node {
    Record(Map<String, Value>),
    Array(Vec<Value>),
    Text(String),
}

impl Node {
    fn into_value(self) -> Value {
        match self {
            Node::Record(m) => Value::Object(m),
            Node::Array(a) => Value::Array(a),
            Node::Text(t) => Value::String(t),
        }
    }
}

fn parse_xml(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<(String, Node)> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let bad = |e: &dyn std::fmt::Display| format!("the XML body does not parse: {e}");
    loop {
        let event = reader.read_event().map_err(|e| bad(&e))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if stack.len() > 32 {
                    return Err("the XML body nests deeper than 32 elements".into());
                }
                if let Some((_, top @ Node::Text(_))) = stack.last_mut() {
                    *top = Node::Record(Map::new());
                }
                let name = e.name().as_ref().to_owned();
                let kind = e
                    .try_get_attribute("type")
                    .map_err(|e| bad(&e))?
                    .map(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map(|v| v.into_owned())
                    })
                    .transpose()
                    .map_err(|e| bad(&e))?;
                let node = match kind.as_deref() {
                    Some("record") => Node::Record(Map::new()),
                    Some("array") => Node::Array(Vec::new()),
                    _ => Node::Text(String::new()),
                };
                stack.push((name, node));
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root)?;
                }
            }
            Event::Text(t) => text(&mut stack, &t.xml10_content())?,
            Event::CData(t) => text(&mut stack, &t.xml10_content())?,
            Event::GeneralRef(r) => {
                let resolved = match &*r {
                    "amp" => "&".to_string(),
                    "lt" => "<".to_string(),
                    "gt" => ">".to_string(),
                    "quot" => "\"".to_string(),
                    "apos" => "'".to_string(),
                    other => match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => return Err(format!("the XML body uses an unknown entity &{other};")),
                    },
                };
                text(&mut stack, &resolved)?;
            }
            Event::End(_) => close(&mut stack, &mut root)?,
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("the XML body ends inside an element".into());
    }
    match root {
        Some((_, Value::Object(map))) => Ok(map),
        Some((name, _)) => Err(format!("the XML root <{name}> holds no records")),
        None => Err("the XML body has no root element".into()),
    }
}

fn text(stack: &mut [(String, Node)], s: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some((_, Node::Text(t))) => {
            t.push_str(s);
            Ok(())
        }
        _ if s.trim().is_empty() => Ok(()),
        Some((name, _)) => Err(format!("the XML element <{name}> mixes text and elements")),
        None => Err("the XML body has text outside its root".into()),
    }
}

fn close(stack: &mut Vec<(String, Node)>, root: &mut Option<(String, Value)>) -> Result<(), String> {
    let (name, node) = stack
        .pop()
        .ok_or("the XML body closes an element it never opened")?;
    let value = node.into_value();
    match stack.last_mut() {
        Some((_, Node::Record(map))) => {
            map.insert(name, value);
        }
        Some((_, Node::Array(items))) => items.push(value),
        Some((parent, Node::Text(_))) => {
            return Err(format!("the XML element <{parent}> mixes text and elements"));
        }
        None if root.is_none() => *root = Some((name, value)),
        None => return Err("the XML body has two root elements".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_requests_become_the_same_tree_as_json() {
        let xml = br#"<data><acceptreq type="record"><Patient_ID type="string">1</Patient_ID>
            <Note type="string">a &amp; b &#x41;</Note></acceptreq></data>"#;
        let json = br#"{"acceptreq":{"Patient_ID":"1","Note":"a & b A"}}"#;
        assert_eq!(
            parse(Format::Xml, xml).unwrap(),
            parse(Format::Json, json).unwrap()
        );
    }

    #[test]
    fn responses_render_typed_xml_with_array_children() {
        let v: Map<String, Value> =
            serde_json::from_str(r#"{"listres":{"Api_Result":"00","List":[{"Id":"1"},{"Id":"2"}]}}"#)
                .unwrap();
        let xml = String::from_utf8(render(Format::Xml, &v)).unwrap();
        assert!(
            xml.contains(r#"<List type="array"><List_child type="record"><Id type="string">1</Id>"#),
            "{xml}"
        );
        let back = parse(Format::Xml, xml.replace("xmlio2", "data").as_bytes()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn api_results_are_found_in_both_formats() {
        let json = br#"{"acceptres":{"Api_Result":"00","Api_Result_Message":"ok"}}"#;
        assert_eq!(api_result(Format::Json, json).as_deref(), Some("00"));
        let xml = engine_answer(Format::Xml, "/orca11/acceptmodv2", b"", "W90", "queued");
        assert_eq!(api_result(Format::Xml, &xml).as_deref(), Some("W90"));
        assert!(String::from_utf8_lossy(&xml).contains("<acceptmodv2res type=\"record\">"));
        let named = engine_answer(Format::Json, "/x", br#"{"acceptreq":{}}"#, "90", "no");
        assert!(String::from_utf8_lossy(&named).contains("acceptres"));
        assert!(is_success("00") && is_success("0000") && is_success("W01"));
        assert!(!is_success("01") && !is_success("") && !is_success("E10"));
    }

    /// The root element of the gateway's own answer was named after the request's record or the
    /// path's last segment whatever they held, so a terminal could make the answer malformed XML
    /// (the property the `engine_body` fuzz target checks).
    #[test]
    fn the_answers_root_element_is_a_plain_name() {
        for (path, body) in [
            ("/orca11/a\"b", &b""[..]),
            ("/orca11/x", b"<data><a<b&req type=\"record\"/></data>"),
            ("/orca11/x", b"<data><a:b\"req type=\"record\"/></data>"),
            ("/", b""),
        ] {
            let xml = String::from_utf8(engine_answer(Format::Xml, path, body, "90", "no")).unwrap();
            assert_eq!(
                api_result(Format::Xml, xml.as_bytes()).as_deref(),
                Some("90"),
                "{xml}"
            );
            let root = xml
                .split("<xmlio2><")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap();
            assert!(is_plain_name(root), "{path} {body:?}: {xml}");
        }
        let named = engine_answer(Format::Xml, "/orca11/acceptmodv2", b"", "90", "no");
        assert!(String::from_utf8_lossy(&named).contains("<acceptmodv2res type=\"record\">"));
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_panic() {
        for bad in [
            &b"<data><a type=\"record\">"[..],
            b"<data></x>",
            b"<a/><b/>",
            b"<data>&nope;</data>",
            b"text",
        ] {
            assert!(
                parse(Format::Xml, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
