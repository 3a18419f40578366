//! The ttrpc wire by hand, for tests that play a host no ttrpc client would
//! be: thousands of calls pipelined on one connection, answers never read,
//! connections that never send a frame.
//!
//! A frame is a 10-byte header (payload length and stream ID as big-endian
//! u32, a type, flags) and its payload; a request's payload is a
//! `ttrpc::Request` naming the service and method, a response's a
//! `ttrpc::Response` with the status.

use protobuf::Message as _;
use std::io::{self, Read};

/// The service the agent serves (the wire contract's name).
pub const SERVICE: &str = "nerdbox.services.socketforward.v1.SocketForward";

/// Frame type of a request.
pub const REQUEST: u8 = 1;
/// Frame type of a response.
pub const RESPONSE: u8 = 2;
/// Frame type of a streaming call's data.
pub const DATA: u8 = 3;
/// Flag: the sender closed its side of the stream.
pub const REMOTE_CLOSED: u8 = 0x1;
/// Flags of a request opening a stream the client sends on (Accept).
pub const CLIENT_STREAM: u8 = 0x2 | 0x4;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The call's stream ID.
    pub id: u32,
    /// Its type.
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A frame's bytes.
pub fn frame(id: u32, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload under 4 GiB");
    let mut f = Vec::with_capacity(10 + payload.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(payload);
    f
}

/// A request frame calling `method` of the agent's service with `message`.
pub fn request(id: u32, method: &str, message: &impl protobuf::Message) -> Vec<u8> {
    request_flagged(id, method, message, 0)
}

/// [`request`] with header `flags` ([`CLIENT_STREAM`] opens an Accept call).
pub fn request_flagged(
    id: u32,
    method: &str,
    message: &impl protobuf::Message,
    flags: u8,
) -> Vec<u8> {
    let req = ttrpc::Request {
        service: SERVICE.to_owned(),
        method: method.to_owned(),
        payload: message.write_to_bytes().expect("encodable"),
        ..Default::default()
    };
    frame(
        id,
        REQUEST,
        flags,
        &req.write_to_bytes().expect("encodable"),
    )
}

/// Reads one frame.
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Frame {
        id,
        kind: h[8],
        flags: h[9],
        payload,
    })
}

/// A response frame's status: its code and message (`None` for other frames).
pub fn status(f: &Frame) -> Option<(ttrpc::Code, String)> {
    if f.kind != RESPONSE {
        return None;
    }
    let resp = ttrpc::Response::parse_from_bytes(&f.payload).ok()?;
    let status = resp.status.into_option().unwrap_or_default();
    Some((status.code(), status.message))
}
