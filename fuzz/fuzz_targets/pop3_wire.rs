//! Arbitrary POP3 server output through a whole session of the wire protocol.
//! The input and its checks: `mail2ticket::fuzzing::Harness::pop3_wire`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mail2ticket::fuzzing::Harness;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| HARNESS.pop3_wire(data));
