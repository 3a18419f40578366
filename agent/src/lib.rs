//! sockfwd guest agent.
