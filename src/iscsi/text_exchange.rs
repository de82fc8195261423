//! Text Request/Response exchanges (RFC 7143 §6.1.1, §11.10): long requests arrive in several
//! PDUs with the C bit, long responses leave in several PDUs, each fetched by an empty Text
//! Request that echoes our Target Transfer Tag.

use bytes::{Bytes, BytesMut};

/// Longest text request we collect across continued PDUs.
const MAX_REQUEST_TEXT: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct TextExchange {
    request: BytesMut,
    /// While a long request is arriving: the TTT the initiator echoes with its next part.
    collecting: Option<u32>,
    /// Response bytes not sent yet, and the TTT the initiator must echo to get them.
    pending: Option<(u32, Bytes)>,
}

/// What the caller should do with one Text Request.
#[derive(Debug, PartialEq, Eq)]
pub enum TextStep {
    /// More request text is coming: answer with an empty response (C=0, F=0) carrying this
    /// TTT, which the initiator echoes with the next part (§11.10.4).
    NeedMore(u32),
    /// The request is complete: compute the response text and pass it to [`TextExchange::respond`].
    Request(Bytes),
    /// The initiator asks for the next part of a long response.
    Continue,
    /// The request is malformed (too long, or an unknown TTT).
    Error,
}

/// One Text Response PDU to send.
#[derive(Debug, PartialEq, Eq)]
pub struct TextChunk {
    pub data: Bytes,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub ttt: u32,
}

impl TextExchange {
    /// Feeds one Text Request (its C bit, TTT and data); `fresh_ttt` is an unused target
    /// transfer tag the exchange may hand out.
    pub fn receive(
        &mut self,
        continue_bit: bool,
        ttt: u32,
        data: &Bytes,
        fresh_ttt: u32,
    ) -> TextStep {
        if ttt != crate::wire::RESERVED_TAG {
            if matches!(&self.pending, Some((pending, _)) if *pending == ttt) {
                return TextStep::Continue;
            }
            if self.collecting != Some(ttt) {
                return TextStep::Error;
            }
        } else {
            // A new request abandons any unfinished exchange.
            self.pending = None;
            self.request.clear();
        }
        self.collecting = None;
        if self.request.len() + data.len() > MAX_REQUEST_TEXT {
            self.request.clear();
            return TextStep::Error;
        }
        self.request.extend_from_slice(data);
        if continue_bit {
            self.collecting = Some(fresh_ttt);
            TextStep::NeedMore(fresh_ttt)
        } else {
            TextStep::Request(std::mem::take(&mut self.request).freeze())
        }
    }

    /// Starts sending a response whose later parts are fetched with `ttt`; returns its first
    /// PDU.
    pub fn respond(&mut self, text: Bytes, max_segment: u32, ttt: u32) -> TextChunk {
        self.pending = Some((ttt, text));
        self.next_chunk(max_segment)
    }

    /// The next PDU of the pending response.
    pub fn next_chunk(&mut self, max_segment: u32) -> TextChunk {
        let Some((ttt, rest)) = self.pending.take() else {
            return TextChunk {
                data: Bytes::new(),
                final_bit: true,
                continue_bit: false,
                ttt: crate::wire::RESERVED_TAG,
            };
        };
        let max = (max_segment as usize).max(512);
        if rest.len() <= max {
            return TextChunk {
                data: rest,
                final_bit: true,
                continue_bit: false,
                ttt: crate::wire::RESERVED_TAG,
            };
        }
        let data = rest.slice(..max);
        self.pending = Some((ttt, rest.slice(max..)));
        TextChunk {
            data,
            final_bit: false,
            continue_bit: true,
            ttt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RESERVED_TAG;

    const SEND_ALL: &[u8] = b"SendTargets=All\0";

    #[test]
    fn long_responses_are_fetched_in_parts() {
        let mut x = TextExchange::default();
        let step = x.receive(false, RESERVED_TAG, &Bytes::from_static(SEND_ALL), 5);
        assert_eq!(step, TextStep::Request(Bytes::from_static(SEND_ALL)));
        let first = x.respond(Bytes::from(vec![b'a'; 1300]), 512, 5);
        assert!(first.continue_bit && !first.final_bit && first.data.len() == 512);
        assert_eq!(first.ttt, 5);
        assert_eq!(x.receive(false, 5, &Bytes::new(), 6), TextStep::Continue);
        let second = x.next_chunk(512);
        assert_eq!(second.ttt, 5);
        let third = x.next_chunk(512);
        assert!(third.final_bit && third.data.len() == 276 && third.ttt == RESERVED_TAG);
        assert_eq!(x.receive(false, 5, &Bytes::new(), 7), TextStep::Error);
    }

    #[test]
    fn continued_requests_are_joined() {
        let mut x = TextExchange::default();
        let step = x.receive(true, RESERVED_TAG, &Bytes::from_static(b"SendTar"), 9);
        assert_eq!(step, TextStep::NeedMore(9));
        // The next part echoes the TTT keel handed out.
        let step = x.receive(false, 9, &Bytes::from_static(b"gets=All\0"), 10);
        assert_eq!(step, TextStep::Request(Bytes::from_static(SEND_ALL)));
        assert_eq!(x.receive(false, 9, &Bytes::new(), 11), TextStep::Error);
    }
}
